//! The paced link of `splitstream-bench policy`: a UDP relay in this process between
//! the devices and the edge. It paces the uplink with a token bucket at the link's
//! rate, delays both directions by half the round trip (and the edge's answers by an
//! extra delay, for a capped edge), and drops past a 64 KiB queue, as a router would.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

/// Bytes the uplink queue holds before it drops packets.
const QUEUE_LIMIT: usize = 64 << 10;

/// The link's state, changed by the scenario between frames.
pub(crate) struct LinkState {
    /// Uplink rate, bits per second.
    bps: AtomicU64,
    /// Delay each way, microseconds.
    one_way_us: AtomicU64,
    /// Extra delay on the edge's answers (a capped, slower edge), microseconds.
    extra_down_us: AtomicU64,
    /// Bytes waiting in the uplink queue.
    queued: AtomicUsize,
    /// Packets dropped at the full queue.
    dropped: AtomicU64,
}

impl LinkState {
    /// A link at `mbps` up, `rtt_ms` round trip, nothing queued.
    pub(crate) fn new(mbps: f64, rtt_ms: f64) -> Self {
        let link = Self {
            bps: AtomicU64::new(0),
            one_way_us: AtomicU64::new(0),
            extra_down_us: AtomicU64::new(0),
            queued: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
        };
        link.set(mbps, rtt_ms, 0.0);
        link
    }

    /// Changes the uplink rate, the round trip and the edge's extra answer delay.
    pub(crate) fn set(&self, mbps: f64, rtt_ms: f64, extra_down_ms: f64) {
        self.bps.store((mbps * 1e6) as u64, Ordering::Relaxed);
        self.one_way_us
            .store((rtt_ms * 500.0) as u64, Ordering::Relaxed);
        self.extra_down_us
            .store((extra_down_ms * 1e3) as u64, Ordering::Relaxed);
    }
    fn bps(&self) -> f64 {
        self.bps.load(Ordering::Relaxed).max(1) as f64
    }
}

struct Packet {
    data: Vec<u8>,
    back: Arc<UdpSocket>,
}

/// Starts the relay; devices connect to the returned address.
pub(crate) async fn start_relay(
    edge: SocketAddr,
    link: Arc<LinkState>,
) -> anyhow::Result<SocketAddr> {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
    let addr = front.local_addr()?;
    let (up_tx, mut up_rx) = tokio::sync::mpsc::unbounded_channel::<Packet>();
    // Pacer: serialise packets at the link rate (token bucket, bursts under 1 ms since
    // timers are no finer), then deliver after the one-way delay, in order.
    let (deliver_tx, mut deliver_rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Packet)>();
    let pacer_link = link.clone();
    tokio::spawn(async move {
        let mut next_free = Instant::now();
        while let Some(p) = up_rx.recv().await {
            let now = Instant::now();
            next_free = next_free.max(now)
                + Duration::from_secs_f64(p.data.len() as f64 * 8.0 / pacer_link.bps());
            if next_free > now + Duration::from_millis(1) {
                tokio::time::sleep_until(next_free.into()).await;
            }
            pacer_link.queued.fetch_sub(p.data.len(), Ordering::Relaxed);
            let delay = Duration::from_micros(pacer_link.one_way_us.load(Ordering::Relaxed));
            let _ = deliver_tx.send((Instant::now() + delay, p));
        }
    });
    tokio::spawn(async move {
        while let Some((at, p)) = deliver_rx.recv().await {
            tokio::time::sleep_until(at.into()).await;
            let _ = p.back.send(&p.data).await;
        }
    });
    // Front: one socket towards the edge per device address (as a NAT would).
    tokio::spawn(async move {
        let mut backs: BTreeMap<SocketAddr, Arc<UdpSocket>> = BTreeMap::new();
        let mut buf = vec![0u8; 65536];
        loop {
            let Ok((n, from)) = front.recv_from(&mut buf).await else {
                return;
            };
            let back = match backs.get(&from) {
                Some(b) => b.clone(),
                None => {
                    let Ok(sock) = UdpSocket::bind("127.0.0.1:0").await else {
                        continue;
                    };
                    if sock.connect(edge).await.is_err() {
                        continue;
                    }
                    let sock = Arc::new(sock);
                    backs.insert(from, sock.clone());
                    tokio::spawn(downlink(sock.clone(), front.clone(), from, link.clone()));
                    sock
                }
            };
            let len = n.min(buf.len());
            if link.queued.load(Ordering::Relaxed) + len > QUEUE_LIMIT {
                link.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            link.queued.fetch_add(len, Ordering::Relaxed);
            let _ = up_tx.send(Packet {
                data: buf[..len].to_vec(),
                back,
            });
        }
    });
    Ok(addr)
}

/// The edge's packets back to one device, after the one-way delay (and the capped
/// edge's extra delay). The downlink is not paced: answers are a few hundred bytes.
async fn downlink(
    back: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    to: SocketAddr,
    link: Arc<LinkState>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let front2 = front.clone();
    tokio::spawn(async move {
        while let Some((at, data)) = rx.recv().await {
            tokio::time::sleep_until(at.into()).await;
            let _ = front2.send_to(&data, to).await;
        }
    });
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok(n) = back.recv(&mut buf).await else {
            return;
        };
        let delay =
            link.one_way_us.load(Ordering::Relaxed) + link.extra_down_us.load(Ordering::Relaxed);
        let at = Instant::now() + Duration::from_micros(delay);
        if tx.send((at, buf[..n.min(buf.len())].to_vec())).is_err() {
            return;
        }
    }
}
