//! The gossip actor: SWIM membership (foca) carried over NATS. Each node reads its own
//! subject `gossamer.<cluster>.gossip.<node>` and sends foca's packets to its peers'
//! subjects; a starting node says hello on `gossamer.<cluster>.gossip-hello`, and every
//! member that hears it announces itself to the newcomer. The view (alive, suspect and
//! dead members with their incarnations) goes out on a watch channel to whoever needs
//! it: ownership, queries, the API.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use bytes::Bytes;
use foca::{AccumulatingRuntime, Foca, Identity, NoCustomBroadcast, OwnedNotification, PostcardCodec, State, Timer};
use futures::StreamExt;
use gossamer_schemas::subjects::Subjects;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

/// A node as the cluster knows it. `gen` is new at every start (and every rejoin after
/// being declared dead), so a restarted node is a new identity at the same address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeId {
    pub name: String,
    pub gen: u64,
    /// Where its REST API and console answer.
    pub http: String,
    /// It runs the shard role, so shards may be placed on it.
    pub shards: bool,
    /// It runs the queue role, so queues may be delivered by it.
    pub queues: bool,
}

impl Identity for NodeId {
    type Addr = String;

    fn renew(&self) -> Option<Self> {
        Some(Self { gen: self.gen + 1, ..self.clone() })
    }

    fn addr(&self) -> String {
        self.name.clone()
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.gen > adversary.gen
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    Alive,
    Suspect,
    Dead,
}

/// One member in this node's view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    pub node: String,
    pub gen: u64,
    pub http: String,
    pub shards: bool,
    pub queues: bool,
    pub state: MemberState,
    /// Raised by the member itself to refute a suspicion (unknown for this node).
    pub incarnation: Option<u16>,
    /// This is the node giving the view.
    pub me: bool,
}

impl MemberView {
    /// The node giving the view: alive, its incarnation its own business.
    fn me(id: &NodeId) -> Self {
        Self {
            node: id.name.clone(),
            gen: id.gen,
            http: id.http.clone(),
            shards: id.shards,
            queues: id.queues,
            state: MemberState::Alive,
            incarnation: None,
            me: true,
        }
    }
}

/// This node's view of the cluster, sorted by node name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub members: Vec<MemberView>,
}

impl Membership {
    /// Live (alive or suspect: SWIM treats a suspect as alive until it is declared
    /// dead) members that hold shards.
    pub fn shard_nodes(&self) -> Vec<&str> {
        self.live(|m| m.shards)
    }

    /// Live members that deliver queues (not draining).
    pub fn queue_nodes(&self) -> Vec<&str> {
        self.live(|m| m.queues)
    }

    fn live(&self, role: impl Fn(&MemberView) -> bool) -> Vec<&str> {
        self.members.iter().filter(|m| role(m) && m.state != MemberState::Dead).map(|m| m.node.as_str()).collect()
    }

    pub fn get(&self, node: &str) -> Option<&MemberView> {
        self.members.iter().find(|m| m.node == node)
    }
}

/// How gossip runs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub cluster: String,
    pub me: NodeId,
    pub probe_period: Duration,
    pub suspect_after: Duration,
}

impl Settings {
    fn foca_config(&self) -> foca::Config {
        let mut c = foca::Config::simple();
        c.probe_period = self.probe_period;
        c.probe_rtt = self.probe_period * 2 / 5;
        c.suspect_to_down_after = self.suspect_after;
        // Remember dead members for an hour, so they stay on the cluster page a while.
        c.remove_down_after = Some(Duration::from_secs(3600));
        // NATS messages, not UDP datagrams.
        c.max_packet_size = NonZeroUsize::new(64 * 1024).expect("not zero");
        c.notify_down_members = true;
        c.periodic_gossip = Some(foca::PeriodicParams {
            frequency: self.probe_period / 2,
            num_members: NonZeroUsize::new(3).expect("not zero"),
        });
        c.periodic_announce = Some(foca::PeriodicParams {
            frequency: Duration::from_secs(10),
            num_members: NonZeroUsize::new(1).expect("not zero"),
        });
        c
    }
}

/// A fresh generation: milliseconds since the epoch, so a restart always wins.
pub fn new_generation() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(1)
}

type Swim = Foca<NodeId, PostcardCodec, rand::rngs::StdRng, NoCustomBroadcast>;

/// How often a node says hello while it knows no other member, and afterwards (which
/// heals a split where two groups never heard of each other).
const HELLO_ALONE: Duration = Duration::from_millis(500);
const HELLO_EVERY: Duration = Duration::from_secs(5);

pub struct GossipActor {
    settings: Settings,
    subjects: Subjects,
    nats: async_nats::Client,
    swim: Swim,
    runtime: AccumulatingRuntime<NodeId>,
    /// Packets go out in order through one task.
    outbox: tokio::sync::mpsc::UnboundedSender<(String, Bytes)>,
    view: tokio::sync::watch::Sender<Membership>,
    left: bool,
}

impl GossipActor {
    /// Returns the actor (to start) and a receiver of its view.
    pub fn new(nats: async_nats::Client, settings: Settings) -> (Self, tokio::sync::watch::Receiver<Membership>) {
        let rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
        let swim = Foca::new(settings.me.clone(), settings.foca_config(), rng, PostcardCodec);
        let (outbox, mut out) = tokio::sync::mpsc::unbounded_channel::<(String, Bytes)>();
        let sender = nats.clone();
        actix::spawn(async move {
            while let Some((subject, data)) = out.recv().await {
                if let Err(e) = sender.publish(subject, data).await {
                    debug!(error = %e, "gossip-send-failed");
                }
            }
        });
        let (view, rx) = tokio::sync::watch::channel(Membership { members: vec![MemberView::me(&settings.me)] });
        let subjects = Subjects::new(&settings.cluster);
        (Self { settings, subjects, nats, swim, runtime: AccumulatingRuntime::new(), outbox, view, left: false }, rx)
    }

    fn hello(&self) {
        match rmp_serde::to_vec(self.swim.identity()) {
            Ok(bytes) => {
                let _ = self.outbox.send((self.subjects.gossip_hello(), bytes.into()));
            }
            Err(e) => warn!(error = %e, "gossip-hello-unencodable"),
        }
    }

    fn schedule_hello(&self, ctx: &mut Context<Self>) {
        let every = if self.swim.num_members() == 0 { HELLO_ALONE } else { HELLO_EVERY };
        ctx.run_later(every, |act, ctx| {
            if !act.left {
                act.hello();
                act.schedule_hello(ctx);
            }
        });
    }

    /// Sends what foca wants sent, schedules its timers, logs its news and publishes the
    /// view when it changed.
    fn drain(&mut self, ctx: &mut Context<Self>) {
        while let Some((to, data)) = self.runtime.to_send() {
            let _ = self.outbox.send((self.subjects.gossip(&to.name), data));
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            ctx.run_later(after, move |act, ctx| act.timer(timer, ctx));
        }
        while let Some(n) = self.runtime.to_notify() {
            match n {
                OwnedNotification::MemberUp(id) => info!(member = %id.name, gen = id.gen, "member-up"),
                OwnedNotification::MemberDown(id) => warn!(member = %id.name, gen = id.gen, "member-down"),
                OwnedNotification::Rename(a, b) => debug!(member = %a.name, from = a.gen, to = b.gen, "member-renamed"),
                OwnedNotification::Rejoin(id) => warn!(gen = id.gen, "gossip-rejoined-after-being-declared-dead"),
                OwnedNotification::Defunct => warn!("gossip-defunct"),
                OwnedNotification::Active => info!("gossip-active"),
                OwnedNotification::Idle => info!("gossip-idle"),
            }
        }
        self.publish_view();
    }

    fn publish_view(&self) {
        let me = self.swim.identity();
        let mut members: BTreeMap<String, MemberView> = BTreeMap::new();
        for m in self.swim.iter_membership_state() {
            let id = m.id();
            if id.name == me.name {
                continue;
            }
            let state = match m.state() {
                State::Alive => MemberState::Alive,
                State::Suspect => MemberState::Suspect,
                State::Down => MemberState::Dead,
            };
            let view = MemberView {
                node: id.name.clone(),
                gen: id.gen,
                http: id.http.clone(),
                shards: id.shards,
                queues: id.queues,
                state,
                incarnation: Some(m.incarnation()),
                me: false,
            };
            // One row per name: the newest identity.
            match members.get(&id.name) {
                Some(have) if have.gen > id.gen => {}
                _ => {
                    members.insert(id.name.clone(), view);
                }
            }
        }
        members.insert(me.name.clone(), MemberView::me(me));
        let view = Membership { members: members.into_values().collect() };
        self.view.send_if_modified(|v| {
            if *v == view {
                false
            } else {
                *v = view;
                true
            }
        });
    }

    fn timer(&mut self, timer: Timer<NodeId>, ctx: &mut Context<Self>) {
        if self.left {
            return;
        }
        if let Err(e) = self.swim.handle_timer(timer, &mut self.runtime) {
            debug!(error = %e, "gossip-timer-error");
        }
        self.drain(ctx);
    }
}

impl Actor for GossipActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let nats = self.nats.clone();
        let own = self.subjects.gossip(&self.settings.me.name);
        let hello = self.subjects.gossip_hello();
        // Subscribe before saying hello, so the answers find us.
        ctx.wait(
            async move {
                let inbox = nats.subscribe(own).await;
                let hellos = nats.subscribe(hello).await;
                let _ = nats.flush().await;
                (inbox, hellos)
            }
            .into_actor(self)
            .map(move |(inbox, hellos), act, ctx| {
                match (inbox, hellos) {
                    (Ok(inbox), Ok(hellos)) => {
                        ctx.add_stream(futures::stream::select(inbox, hellos).map(Packet));
                    }
                    (Err(e), _) | (_, Err(e)) => {
                        warn!(error = %e, "gossip-subscribe-failed");
                        ctx.stop();
                        return;
                    }
                }
                act.hello();
                act.schedule_hello(ctx);
                act.publish_view();
            }),
        );
    }
}

/// A message on the gossip inbox or the hello subject.
pub struct Packet(async_nats::Message);

impl StreamHandler<Packet> for GossipActor {
    fn handle(&mut self, Packet(msg): Packet, ctx: &mut Context<Self>) {
        if self.left {
            return;
        }
        if msg.subject.as_str() == self.subjects.gossip_hello() {
            let Ok(id) = rmp_serde::from_slice::<NodeId>(&msg.payload) else {
                debug!("gossip-hello-unreadable");
                return;
            };
            let me = self.swim.identity();
            if id.name == me.name {
                return;
            }
            let known = self.swim.iter_members().any(|m| *m.id() == id);
            if !known {
                if let Err(e) = self.swim.announce(id, &mut self.runtime) {
                    debug!(error = %e, "gossip-announce-failed");
                }
            }
        } else if let Err(e) = self.swim.handle_data(&msg.payload, &mut self.runtime) {
            debug!(error = %e, "gossip-packet-rejected");
        }
        self.drain(ctx);
    }

    fn finished(&mut self, _: &mut Context<Self>) {
        debug!("gossip-subscription-ended");
    }
}

/// What this node sees now.
#[derive(Message)]
#[rtype(result = "Membership")]
pub struct GetMembership;

impl Handler<GetMembership> for GossipActor {
    type Result = MessageResult<GetMembership>;

    fn handle(&mut self, _: GetMembership, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.view.borrow().clone())
    }
}

/// Whether this node takes shards and delivers queues (when it has those roles): off to
/// drain it (the others place its shards among themselves and take its queues over),
/// on again to take its share back. The node becomes a new generation of itself with
/// the flags changed, so every member learns it at once.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetShards(pub bool);

impl Handler<SetShards> for GossipActor {
    type Result = ();

    fn handle(&mut self, SetShards(on): SetShards, ctx: &mut Context<Self>) {
        let current = self.swim.identity().clone();
        if current.shards == on {
            return;
        }
        let next = NodeId { gen: current.gen + 1, shards: on, queues: on && self.settings.me.queues, ..current };
        info!(shards = on, gen = next.gen, "gossip-identity-changed");
        if let Err(e) = self.swim.change_identity(next, &mut self.runtime) {
            warn!(error = %e, "gossip-identity-change-failed");
        }
        self.drain(ctx);
    }
}

/// Leave the cluster cleanly (on shutdown): members mark this node dead at once instead
/// of suspecting it first. Resolves once the goodbye is on the wire.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Leave;

impl Handler<Leave> for GossipActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Leave, _: &mut Context<Self>) -> Self::Result {
        if let Err(e) = self.swim.leave_cluster(&mut self.runtime) {
            debug!(error = %e, "gossip-leave-failed");
        }
        self.left = true;
        let mut packets = Vec::new();
        while let Some((to, data)) = self.runtime.to_send() {
            packets.push((self.subjects.gossip(&to.name), data));
        }
        let nats = self.nats.clone();
        Box::pin(async move {
            for (subject, data) in packets {
                let _ = nats.publish(subject, data).await;
            }
            let _ = nats.flush().await;
        })
    }
}
