//! Events the runner emits while it works. The runner never prints; a reporter
//! turns these into text.

use super::record::{RunRecord, StepRecord};
use crate::scenario::{Scenario, Step};

#[derive(Debug)]
pub enum Event<'a> {
    ScenarioStarted { scenario: &'a Scenario },
    StepStarted { step: &'a Step },
    StepFinished { record: &'a StepRecord },
    ScenarioFinished { record: &'a RunRecord },
}
