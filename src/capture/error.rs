//! What can go wrong while capturing: one variant per operation, each carrying the
//! error that caused it.

use std::path::PathBuf;

use crate::sandbox::SandboxError;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("failed to create the capture directory {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to compile the capture filter `{filter}` for {iface} in `{netns}` (check its pcap-filter(7) syntax)")]
    Filter {
        netns: String,
        iface: String,
        filter: String,
        #[source]
        source: pcap::Error,
    },
    #[error("failed to open the network namespace `{netns}` for capture")]
    OpenNetns {
        netns: String,
        #[source]
        source: SandboxError,
    },
    #[error("failed to open the network namespace file {} for capture", path.display())]
    OpenNetnsFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to enter the network namespace `{netns}` for capture")]
    EnterNetns {
        netns: String,
        #[source]
        source: nix::Error,
    },
    #[error("failed to start a capture thread")]
    SpawnThread(#[source] std::io::Error),
    #[error("failed to wait for packets and link events in `{netns}`")]
    Poll {
        netns: String,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to open a packet capture on all interfaces of `{netns}`")]
    OpenPcap {
        netns: String,
        #[source]
        source: pcap::Error,
    },
    #[error("failed to read packets in `{netns}`")]
    ReadPcap {
        netns: String,
        #[source]
        source: pcap::Error,
    },
    #[error("failed to read the capture statistics of `{netns}`")]
    Stats {
        netns: String,
        #[source]
        source: pcap::Error,
    },
    #[error("failed to open a netlink socket for link events in `{netns}`")]
    NetlinkSocket {
        netns: String,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to list the links of `{netns}`")]
    ListLinks {
        netns: String,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to read link events in `{netns}`")]
    LinkEvents {
        netns: String,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to create the capture file {}", path.display())]
    CreateFile {
        path: PathBuf,
        #[source]
        source: pcap::Error,
    },
    #[error("failed to write the capture file {}", path.display())]
    FlushFile {
        path: PathBuf,
        #[source]
        source: pcap::Error,
    },
    #[error("failed to watch {dir} for new network namespaces")]
    WatchNetnsDir {
        dir: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the capture thread of `{netns}` ended before it was ready")]
    ThreadGone { netns: String },
}
