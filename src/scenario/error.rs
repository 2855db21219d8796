//! Errors of reading and validating a scenario file, rendered like a compiler's:
//! file, line, a caret under the offending value, and a `help:` line.

use std::ops::Range;
use std::path::PathBuf;

use miette::{Diagnostic, NamedSource, SourceSpan};

#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum ScenarioError {
    #[error("failed to read scenario file {}", path.display())]
    #[diagnostic(
        code(netscenario::read),
        help("check the path; `netscenario run` takes files or directories of *.toml")
    )]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    #[diagnostic(transparent)]
    Invalid(Box<InvalidScenario>),
}

/// A scenario file with one or more problems; the first is shown with its source,
/// the others as related diagnostics.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("{}", first.message)]
#[diagnostic(code(netscenario::invalid))]
pub struct InvalidScenario {
    pub path: PathBuf,
    #[source_code]
    pub src: NamedSource<String>,
    #[label("{}", first.label)]
    pub span: SourceSpan,
    #[help]
    pub help: Option<String>,
    pub first: Problem,
    #[related]
    pub more: Vec<Problem>,
}

/// One thing wrong in a scenario file.
#[derive(Debug, Clone, thiserror::Error, Diagnostic)]
#[error("{message}")]
pub struct Problem {
    pub message: String,
    pub label: String,
    #[label("{label}")]
    pub span: SourceSpan,
    #[help]
    pub help: Option<String>,
    #[source_code]
    pub src: NamedSource<String>,
    /// 1-based line of the span's start.
    pub line: usize,
}

impl ScenarioError {
    /// Problems found, first one first.
    pub fn problems(&self) -> Vec<&Problem> {
        match self {
            ScenarioError::Read { .. } => vec![],
            ScenarioError::Invalid(inv) => {
                let mut v = vec![&inv.first];
                v.extend(inv.more.iter());
                v
            }
        }
    }
}

/// Collects problems while validating one file.
pub(crate) struct Problems {
    path: PathBuf,
    text: String,
    list: Vec<Problem>,
}

impl Problems {
    pub fn new(path: PathBuf, text: String) -> Self {
        Problems {
            path,
            text,
            list: Vec::new(),
        }
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text[..end].matches('\n').count() + 1
    }

    pub fn push(
        &mut self,
        span: Range<usize>,
        message: impl Into<String>,
        label: impl Into<String>,
        help: Option<String>,
    ) {
        let line = self.line_of(span.start);
        self.list.push(Problem {
            message: message.into(),
            label: label.into(),
            span: (span.start, span.end.saturating_sub(span.start)).into(),
            help,
            src: NamedSource::new(self.path.display().to_string(), self.text.clone()),
            line,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn into_error(self) -> Option<ScenarioError> {
        let mut list = self.list.into_iter();
        let first = list.next()?;
        Some(ScenarioError::Invalid(Box::new(InvalidScenario {
            src: NamedSource::new(self.path.display().to_string(), self.text),
            span: first.span,
            help: first.help.clone(),
            path: self.path,
            first,
            more: list.collect(),
        })))
    }
}
