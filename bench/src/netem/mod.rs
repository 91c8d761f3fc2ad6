//! A user-space link emulator for `splitstream-bench link` (this kernel has no netem):
//! two network namespaces, one for the device and one for the edge, each with a TUN
//! device, and a forwarding thread in this process that moves every IP packet between
//! the two TUNs through [`impair::Pipe`], one pipe per direction. Both QUIC (UDP) and
//! TCP cross it as packets, so both meet the same loss, delay, jitter, reordering and
//! rate limit, and a retransmission costs bytes on the wire as it would on a real link.
//!
//! ```text
//!  ns dev: 10.77.0.1 --- sslink0 (TUN) ==> [up pipe]   ==> sslink0 (TUN) --- 10.77.0.2 :ns edge
//!                                     <== [down pipe] <==
//! ```
//!
//! The impairment logic is [`impair`] (deterministic, fake-clock tests); this module is
//! the thin shell: namespaces and addresses with `ip`, TUNs with `tun-rs`, threads
//! moved into a namespace with `setns` (rustix), one `ppoll` loop. It needs root.

pub(crate) mod impair;

use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use impair::{Impairment, Pipe, PipeStats};
use rustix::event::{PollFd, PollFlags, Timespec};

/// The device's address on the emulated link.
pub(crate) const DEVICE_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// The edge's address on the emulated link.
pub(crate) const EDGE_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// The TUN's name inside each namespace.
const IFNAME: &str = "sslink0";
/// An Ethernet path's MTU, so QUIC and TCP segment as they would on a real link.
const MTU: u16 = 1500;
/// Longest the forwarder sleeps before looking at its stop flag.
const POLL_CAP: Duration = Duration::from_millis(50);

/// Checks that this process can build the emulator: root, and a TUN driver. (Network
/// namespaces are checked when they are made.) The error is one line saying what to do.
pub(crate) fn preflight() -> anyhow::Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!(
            "splitstream-bench link needs root: it creates network namespaces and TUN devices (run it as root, e.g. with sudo)"
        );
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        bail!("splitstream-bench link needs /dev/net/tun (the tun kernel module): modprobe tun, or run where TUN devices exist");
    }
    Ok(())
}

/// The two directions' counters.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub(crate) struct LinkStats {
    /// Device to edge.
    pub(crate) up: PipeStats,
    /// Edge to device.
    pub(crate) down: PipeStats,
}

impl LinkStats {
    /// The counters accumulated since `earlier`.
    pub(crate) fn since(&self, earlier: &LinkStats) -> LinkStats {
        let d = |a: &PipeStats, b: &PipeStats| PipeStats {
            packets: a.packets - b.packets,
            bytes: a.bytes - b.bytes,
            lost: a.lost - b.lost,
            queue_drops: a.queue_drops - b.queue_drops,
            delivered: a.delivered - b.delivered,
        };
        LinkStats {
            up: d(&self.up, &earlier.up),
            down: d(&self.down, &earlier.down),
        }
    }
}

struct Pipes {
    up: Pipe<Vec<u8>>,
    down: Pipe<Vec<u8>>,
}

/// The running emulator: two namespaces, their TUNs and the forwarding thread.
/// Dropping it stops the thread and deletes the namespaces.
pub(crate) struct EmulatedLink {
    namespaces: Vec<String>,
    pipes: Arc<Mutex<Pipes>>,
    stop: Arc<AtomicBool>,
    forwarder: Option<JoinHandle<anyhow::Result<()>>>,
}

impl EmulatedLink {
    /// Creates the namespaces (named after `tag` and this process), their TUNs and
    /// addresses, and starts forwarding with no impairment. `seed` fixes the random
    /// draws (the down pipe uses the next seed).
    pub(crate) fn start(tag: &str, seed: u64) -> anyhow::Result<Self> {
        preflight()?;
        let pid = std::process::id();
        let mut link = Self {
            namespaces: Vec::new(),
            pipes: Arc::new(Mutex::new(Pipes {
                up: Pipe::new(Impairment::default(), seed),
                down: Pipe::new(Impairment::default(), seed.wrapping_add(1)),
            })),
            stop: Arc::new(AtomicBool::new(false)),
            forwarder: None,
        };
        let mut tuns = Vec::new();
        for (side, addr, peer) in [
            ("dev", DEVICE_ADDR, EDGE_ADDR),
            ("edge", EDGE_ADDR, DEVICE_ADDR),
        ] {
            let ns = format!("{tag}-{pid}-{side}");
            ip(&["netns", "add", &ns]).map_err(|e| {
                anyhow::anyhow!("splitstream-bench link needs network namespaces (ip netns add {ns} failed: {e:#})")
            })?;
            link.namespaces.push(ns.clone());
            let tun = in_namespace(&ns, || {
                tun_rs::DeviceBuilder::new()
                    .name(IFNAME)
                    .mtu(MTU)
                    .packet_information(false)
                    .offload(false)
                    .build_sync()
            })?
            .with_context(|| format!("creating TUN {IFNAME} in namespace {ns}"))?;
            tun.set_nonblocking(true).context("TUN non-blocking")?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &addr.to_string(),
                "peer",
                &peer.to_string(),
                "dev",
                IFNAME,
            ])?;
            ip(&["-n", &ns, "link", "set", IFNAME, "up"])?;
            tuns.push(tun);
        }
        let (Some(edge_tun), Some(dev_tun)) = (tuns.pop(), tuns.pop()) else {
            bail!("internal: two TUNs expected");
        };
        let (pipes, stop) = (link.pipes.clone(), link.stop.clone());
        link.forwarder = Some(
            std::thread::Builder::new()
                .name("link-forwarder".into())
                .spawn(move || forward(dev_tun, edge_tun, pipes, stop))
                .context("starting the forwarder thread")?,
        );
        Ok(link)
    }

    /// The device's namespace.
    pub(crate) fn device_ns(&self) -> &str {
        &self.namespaces[0]
    }

    /// The edge's namespace.
    pub(crate) fn edge_ns(&self) -> &str {
        &self.namespaces[1]
    }

    /// Sets the impairment of each direction for packets from now on.
    pub(crate) fn set(&self, up: Impairment, down: Impairment) {
        let mut p = self.pipes.lock().unwrap_or_else(PoisonError::into_inner);
        p.up.set_impairment(up);
        p.down.set_impairment(down);
    }

    /// The counters so far.
    pub(crate) fn stats(&self) -> LinkStats {
        let p = self.pipes.lock().unwrap_or_else(PoisonError::into_inner);
        LinkStats {
            up: p.up.stats(),
            down: p.down.stats(),
        }
    }

    /// Whether the forwarder is still running (it stops only on an I/O error).
    pub(crate) fn check(&mut self) -> anyhow::Result<()> {
        if self.forwarder.as_ref().is_some_and(|f| f.is_finished()) {
            if let Some(f) = self.forwarder.take() {
                return match f.join() {
                    Ok(r) => r.context("the link forwarder stopped"),
                    Err(_) => bail!("the link forwarder panicked"),
                };
            }
        }
        Ok(())
    }
}

impl Drop for EmulatedLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(f) = self.forwarder.take() {
            let _ = f.join();
        }
        for ns in &self.namespaces {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("warning: could not delete network namespace {ns}: {e:#}");
            }
        }
    }
}

/// Runs `ip ARGS`, with its stderr in the error.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Moves the calling thread into network namespace `ns`; threads it spawns afterwards
/// (a tokio runtime's workers) start there too, and its sockets belong there.
pub(crate) fn enter_namespace(ns: &str) -> anyhow::Result<()> {
    let path = format!("/run/netns/{ns}");
    let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    rustix::thread::move_into_link_name_space(
        file.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .with_context(|| format!("entering network namespace {ns}"))
}

/// Runs `f` on a fresh thread inside namespace `ns` and returns its result; the
/// caller's thread stays where it is.
pub(crate) fn in_namespace<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    let ns = ns.to_owned();
    std::thread::spawn(move || -> anyhow::Result<T> {
        enter_namespace(&ns)?;
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in namespace panicked"))?
}

/// The forwarding loop: read whatever both TUNs have, offer it to the pipes, write
/// what is due, sleep (ppoll, nanosecond timeout) until the next packet is due or a
/// TUN becomes readable.
fn forward(
    dev: tun_rs::SyncDevice,
    edge: tun_rs::SyncDevice,
    pipes: Arc<Mutex<Pipes>>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let origin = Instant::now();
    let mut buf = vec![0u8; 64 << 10];
    while !stop.load(Ordering::Relaxed) {
        let wait = {
            let p = pipes.lock().unwrap_or_else(PoisonError::into_inner);
            let now = origin.elapsed();
            [p.up.next_due(), p.down.next_due()]
                .into_iter()
                .flatten()
                .min()
                .map_or(POLL_CAP, |due| due.saturating_sub(now).min(POLL_CAP))
        };
        {
            let mut fds = [
                PollFd::new(&dev, PollFlags::IN),
                PollFd::new(&edge, PollFlags::IN),
            ];
            let timeout = Timespec {
                tv_sec: wait.as_secs() as _,
                tv_nsec: wait.subsec_nanos() as _,
            };
            match rustix::event::poll(&mut fds, Some(&timeout)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e).context("polling the TUNs"),
            }
        }
        let mut p = pipes.lock().unwrap_or_else(PoisonError::into_inner);
        let now = origin.elapsed();
        read_all(&dev, &mut buf, now, &mut p.up).context("reading the device TUN")?;
        read_all(&edge, &mut buf, now, &mut p.down).context("reading the edge TUN")?;
        while let Some(packet) = p.up.pop_due(now) {
            write_packet(&edge, &packet);
        }
        while let Some(packet) = p.down.pop_due(now) {
            write_packet(&dev, &packet);
        }
    }
    Ok(())
}

fn read_all(
    tun: &tun_rs::SyncDevice,
    buf: &mut [u8],
    now: Duration,
    pipe: &mut Pipe<Vec<u8>>,
) -> std::io::Result<()> {
    loop {
        match tun.recv(buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                pipe.offer(now, n, buf[..n].to_vec());
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Writes one packet into a TUN. A refused packet (the receiving stack's backlog full)
/// is a drop, as on a wire, not a reason to stop the link.
fn write_packet(tun: &tun_rs::SyncDevice, packet: &[u8]) {
    let _ = tun.send(packet);
}
