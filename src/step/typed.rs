//! Typed actions, done natively: links, addresses and routes over rtnetlink from a
//! socket opened inside the target namespace, sysctls through that namespace's
//! `/proc/sys`, namespaces by unshare + bind mount, iptables through the `iptables`
//! crate (which runs the iptables binary) on a thread inside the namespace.
//! Each [`Action`] variant documents the command it is equivalent to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth};
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};

use crate::probe::transport::{Listener, Transport, TransportError};
use crate::sandbox::{Sandbox, SandboxError};
use crate::scenario::{Action, IptablesOp, MasterChange, L4};

#[derive(Debug, thiserror::Error)]
pub enum TypedError {
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error("failed to open a netlink socket in `{netns}`")]
    NetlinkSocket {
        netns: String,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to {what} in `{netns}`")]
    Netlink {
        what: String,
        netns: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("failed to find link `{link}` in `{netns}`: no such device")]
    NoSuchLink { link: String, netns: String },
    #[error("links in `{netns}` not ready (up, carrier, forwarding) {after:?} after they were set up: {links}")]
    NotReady {
        netns: String,
        links: String,
        after: std::time::Duration,
    },
    #[error("failed to write sysctl {key} in `{netns}`")]
    Sysctl {
        key: String,
        netns: String,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to start `{what}` in `{netns}`")]
    Listen {
        what: String,
        netns: String,
        #[source]
        source: TransportError,
    },
    /// The iptables crate returns `Box<dyn Error>` (not `Send`), so its text is kept.
    #[error("failed to run `{command}` in `{netns}`: {message}")]
    Iptables {
        command: String,
        netns: String,
        message: String,
    },
}

/// Apply one typed action in namespace `netns` (the step's `in`).
pub async fn apply(sandbox: &Sandbox, netns: &str, action: &Action) -> Result<(), TypedError> {
    match action {
        Action::Run { .. } => unreachable!("run steps go to the shell"),
        Action::Netns { name } => Ok(sandbox.create_netns(name)?),
        Action::Bridge { name, up } => {
            let nl = Netlink::open(sandbox, netns)?;
            let mut b = LinkBridge::new(name);
            if *up {
                b = b.up();
            }
            nl.check(
                format!("create bridge {name}"),
                nl.handle.link().add(b.build()).execute().await,
            )
        }
        Action::Veth {
            name,
            peer,
            netns: end_ns,
            peer_netns,
            master,
            peer_master,
            up,
        } => {
            // Each end is created straight in its namespace, the first one up and
            // with its master, in one request (no move: moving a link costs ~20 ms);
            // then the peer's master and up (the kernel refuses to bring the peer up
            // in the creating request: ENOTCONN).
            let nl = Netlink::open(sandbox, netns)?;
            let there = |ns: &String| -> Result<Option<Netlink>, TypedError> {
                if ns == netns {
                    Ok(None)
                } else {
                    Netlink::open(sandbox, ns).map(Some)
                }
            };
            let end_nl = there(end_ns)?;
            let master_index = match master {
                Some(m) => Some(end_nl.as_ref().unwrap_or(&nl).index(m).await?),
                None => None,
            };
            let end_fd = (end_ns != netns)
                .then(|| sandbox.netns_fd(end_ns))
                .transpose()?;
            let peer_fd = (peer_netns != netns)
                .then(|| sandbox.netns_fd(peer_netns))
                .transpose()?;
            nl.add_veth(&VethEnds {
                name,
                netns: end_fd.as_ref().map(|f| f.as_raw_fd()),
                master: master_index,
                peer,
                peer_netns: peer_fd.as_ref().map(|f| f.as_raw_fd()),
                up: *up,
            })
            .await?;
            if peer_master.is_some() || *up {
                let peer_nl = there(peer_netns)?;
                let peer_nl = peer_nl.as_ref().unwrap_or(&nl);
                if let Some(m) = peer_master {
                    peer_nl.set_master(peer, Some(m)).await?;
                }
                if *up {
                    peer_nl.set_up(peer, true).await?;
                }
            }
            Ok(())
        }
        Action::Move { link, to } => {
            let nl = Netlink::open(sandbox, netns)?;
            move_link(sandbox, &nl, link, to).await
        }
        Action::Link { name, up, master } => {
            let nl = Netlink::open(sandbox, netns)?;
            match master {
                Some(MasterChange::Set(m)) => nl.set_master(name, Some(m)).await?,
                Some(MasterChange::Clear) => nl.set_master(name, None).await?,
                None => {}
            }
            if let Some(up) = up {
                nl.set_up(name, *up).await?;
            }
            Ok(())
        }
        Action::Addr { dev, address } => {
            let nl = Netlink::open(sandbox, netns)?;
            let index = nl.index(dev).await?;
            nl.add_address(dev, index, address).await
        }
        Action::Route { dst, via, dev } => {
            let nl = Netlink::open(sandbox, netns)?;
            let oif = match dev {
                Some(d) => Some(nl.index(d).await?),
                None => None,
            };
            nl.add_route(
                dst,
                *via,
                oif,
                action.equivalent().trim_start_matches("ip route add "),
            )
            .await
        }
        Action::Sysctl { key, value } => {
            let path = format!("/proc/sys/{}", key.replace('.', "/"));
            sandbox
                .in_netns(netns, || std::fs::write(&path, format!("{value}\n")))?
                .map_err(|source| TypedError::Sysctl {
                    key: key.clone(),
                    netns: netns.into(),
                    source,
                })
        }
        Action::Iptables {
            ipv6,
            table,
            chain,
            op,
        } => {
            let command = action.equivalent();
            let result = sandbox.in_netns(netns, || -> Result<(), String> {
                let ipt = crate::probe::firewall::iptables_handle(*ipv6)?;
                match op {
                    IptablesOp::Append(rule) => ipt.append(table, chain, rule),
                    IptablesOp::Insert(rule) => ipt.insert(table, chain, rule, 1),
                    IptablesOp::Policy(p) => ipt.set_policy(table, chain, p),
                }
                .map_err(|e| e.to_string())
            })?;
            result.map_err(|message| TypedError::Iptables {
                command,
                netns: netns.into(),
                message: message.trim().to_string(),
            })
        }
        Action::Listen {
            proto,
            port,
            address,
        } => {
            let t = match proto {
                L4::Tcp => Transport::Tcp,
                L4::Udp => Transport::Udp,
            };
            let addrs: Vec<(Transport, SocketAddr)> = match address {
                Some(a) => vec![(t, SocketAddr::new(*a, *port))],
                None => vec![
                    (t, SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), *port)),
                    (t, SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), *port)),
                ],
            };
            let listener = sandbox
                .in_netns(netns, || Listener::bind(&addrs))?
                .map_err(|source| TypedError::Listen {
                    what: action.equivalent(),
                    netns: netns.into(),
                    source,
                })?;
            sandbox.keep(Box::new(listener));
            Ok(())
        }
    }
}

async fn move_link(
    sandbox: &Sandbox,
    nl: &Netlink,
    link: &str,
    to: &str,
) -> Result<(), TypedError> {
    let index = nl.index(link).await?;
    let fd = sandbox.netns_fd(to)?;
    nl.check(
        format!("move {link} into namespace {to}"),
        nl.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .setns_by_fd(fd.as_raw_fd())
                    .build(),
            )
            .execute()
            .await,
    )
}

/// The two ends of a veth pair to create ([`Netlink::add_veth`]).
pub struct VethEnds<'a> {
    pub name: &'a str,
    /// Namespace of `name`, as an open namespace file; `None`: the socket's.
    pub netns: Option<RawFd>,
    /// Index of `name`'s master, in `name`'s namespace.
    pub master: Option<u32>,
    pub peer: &'a str,
    pub peer_netns: Option<RawFd>,
    pub up: bool,
}

/// An rtnetlink connection whose socket lives in one namespace of the sandbox.
pub struct Netlink {
    pub handle: Handle,
    pub netns: String,
}

impl Netlink {
    /// Open the socket on a thread inside `netns`; the connection is driven by the
    /// current (sandbox thread's) tokio runtime.
    pub fn open(sandbox: &Sandbox, netns: &str) -> Result<Netlink, TypedError> {
        let rt = tokio::runtime::Handle::current();
        let (conn, handle, _) = sandbox
            .in_netns(netns, move || {
                let _guard = rt.enter();
                rtnetlink::new_connection()
            })?
            .map_err(|source| TypedError::NetlinkSocket {
                netns: netns.into(),
                source,
            })?;
        tokio::spawn(conn);
        Ok(Netlink {
            handle,
            netns: netns.into(),
        })
    }

    /// The result of a request, as an error that names it and the namespace.
    pub fn check(&self, what: String, r: Result<(), rtnetlink::Error>) -> Result<(), TypedError> {
        r.map_err(|source| TypedError::Netlink {
            what,
            netns: self.netns.clone(),
            source,
        })
    }

    /// The index of link `name` in this namespace.
    pub async fn index(&self, name: &str) -> Result<u32, TypedError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(Some(msg)) => Ok(msg.header.index),
            Ok(None) | Err(_) => Err(TypedError::NoSuchLink {
                link: name.into(),
                netns: self.netns.clone(),
            }),
        }
    }

    /// `ip addr add ADDRESS dev DEV` (DEV has index `index`).
    pub async fn add_address(
        &self,
        dev: &str,
        index: u32,
        address: &IpNet,
    ) -> Result<(), TypedError> {
        self.check(
            format!("add address {address} to {dev}"),
            self.handle
                .address()
                .add(index, address.addr(), address.prefix_len())
                .execute()
                .await,
        )
    }

    /// `ip route add DST [via VIA] [dev OIF]`; `what` is the command's arguments.
    pub async fn add_route(
        &self,
        dst: &IpNet,
        via: Option<IpAddr>,
        oif: Option<u32>,
        what: &str,
    ) -> Result<(), TypedError> {
        let msg = match dst.addr() {
            IpAddr::V4(a) => {
                let mut b =
                    RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(a, dst.prefix_len());
                if let Some(IpAddr::V4(g)) = via {
                    b = b.gateway(g);
                }
                if let Some(i) = oif {
                    b = b.output_interface(i);
                }
                b.build()
            }
            IpAddr::V6(a) => {
                let mut b =
                    RouteMessageBuilder::<Ipv6Addr>::new().destination_prefix(a, dst.prefix_len());
                if let Some(IpAddr::V6(g)) = via {
                    b = b.gateway(g);
                }
                if let Some(i) = oif {
                    b = b.output_interface(i);
                }
                b.build()
            }
        };
        self.check(
            format!("add route {what}"),
            self.handle.route().add(msg).execute().await,
        )
    }

    /// One veth pair, each end created straight in its namespace (`None`: this
    /// socket's), in one request: `ip link add NAME [netns NS] [master M] [up] type
    /// veth peer name PEER [netns PEER_NS]`. `up` is for `NAME` only: the kernel
    /// cannot open the peer before the pair is registered.
    pub async fn add_veth(&self, v: &VethEnds<'_>) -> Result<(), TypedError> {
        let mut peer = LinkMessageBuilder::<LinkUnspec>::new().name(v.peer.to_string());
        if let Some(fd) = v.peer_netns {
            peer = peer.setns_by_fd(fd);
        }
        let mut b = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(v.name.to_string())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())));
        if let Some(fd) = v.netns {
            b = b.setns_by_fd(fd);
        }
        if let Some(m) = v.master {
            b = b.controller(m);
        }
        if v.up {
            b = b.up();
        }
        self.check(
            format!("create veth pair {}/{}", v.name, v.peer),
            self.handle.link().add(b.build()).execute().await,
        )
    }

    async fn set_up(&self, name: &str, up: bool) -> Result<(), TypedError> {
        let index = self.index(name).await?;
        let b = LinkUnspec::new_with_index(index);
        let b = if up { b.up() } else { b.down() };
        self.check(
            format!("set {name} {}", if up { "up" } else { "down" }),
            self.handle.link().set(b.build()).execute().await,
        )
    }

    async fn set_master(&self, name: &str, master: Option<&String>) -> Result<(), TypedError> {
        let index = self.index(name).await?;
        let b = LinkUnspec::new_with_index(index);
        let (b, what) = match master {
            Some(m) => (
                b.controller(self.index(m).await?),
                format!("set {name} master {m}"),
            ),
            None => (b.nocontroller(), format!("set {name} nomaster")),
        };
        self.check(what, self.handle.link().set(b.build()).execute().await)
    }
}
