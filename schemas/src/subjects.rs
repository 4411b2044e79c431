//! NATS subject and stream names. Everything internal lives under
//! `gossamer.<cluster>.`; producers publish to `logs.<stream>`.

/// The stream that captures what producers publish.
pub const LOGS_STREAM: &str = "LOGS";
pub const LOGS_SUBJECTS: &str = "logs.>";
pub const LOGS_PREFIX: &str = "logs.";

/// Header naming why a payload was dead-lettered.
pub const HEADER_ERROR: &str = "Gossamer-Error";
/// Header carrying the subject the dead letter was published on.
pub const HEADER_SUBJECT: &str = "Gossamer-Subject";

#[derive(Debug, Clone)]
pub struct Subjects {
    pub cluster: String,
}

impl Subjects {
    pub fn new(cluster: &str) -> Self {
        Self { cluster: cluster.to_string() }
    }

    fn suffix(&self, base: &str) -> String {
        if self.cluster == "default" {
            base.to_string()
        } else {
            format!("{base}_{}", self.cluster.replace(['.', '*', '>', ' '], "_"))
        }
    }

    /// The shard log stream (`SHARDS`, or `SHARDS_<cluster>`).
    pub fn shards_stream(&self) -> String {
        self.suffix("SHARDS")
    }

    /// The dead-letter stream (`DEADLETTER`, or `DEADLETTER_<cluster>`).
    pub fn deadletter_stream(&self) -> String {
        self.suffix("DEADLETTER")
    }

    pub fn shard(&self, shard: u32) -> String {
        format!("gossamer.{}.shard.{shard}", self.cluster)
    }

    pub fn shards_wildcard(&self) -> String {
        format!("gossamer.{}.shard.*", self.cluster)
    }

    pub fn deadletter(&self) -> String {
        format!("gossamer.{}.deadletter", self.cluster)
    }

    /// Requests to store events, answered once they are in the shard log.
    pub fn ingest(&self, stream: &str) -> String {
        format!("gossamer.{}.ingest.{stream}", self.cluster)
    }

    pub fn ingest_wildcard(&self) -> String {
        format!("gossamer.{}.ingest.>", self.cluster)
    }

    /// The queue group every ingest actor of the cluster joins.
    pub fn ingest_queue_group(&self) -> String {
        format!("gossamer-{}-ingest", self.cluster)
    }

    pub fn api_query(&self) -> String {
        format!("gossamer.{}.api.query", self.cluster)
    }

    /// SQL queries, answered whole (a queue group, as `api.query`).
    pub fn api_sql(&self) -> String {
        format!("gossamer.{}.api.sql", self.cluster)
    }

    /// One node's gossip inbox: SWIM packets for `node`.
    pub fn gossip(&self, node: &str) -> String {
        format!("gossamer.{}.gossip.{node}", self.cluster)
    }

    /// Where a starting node says hello, so that members announce themselves to it.
    pub fn gossip_hello(&self) -> String {
        format!("gossamer.{}.gossip-hello", self.cluster)
    }

    /// Requests one node answers for the shards it holds (scatter-gather).
    pub fn node_query(&self, node: &str) -> String {
        format!("gossamer.{}.node.{node}.query", self.cluster)
    }

    /// Requests that define, change, list or remove notification queues.
    /// Read-your-writes: answered once shard-log positions are applied on every replica.
    /// Where the node that restored a backup tells the others to rebuild their
    /// replicas from the restored copies.
    pub fn restored(&self) -> String {
        format!("gossamer.{}.admin.restored", self.cluster)
    }

    pub fn api_wait(&self) -> String {
        format!("gossamer.{}.api.wait", self.cluster)
    }

    pub fn api_queues(&self) -> String {
        format!("gossamer.{}.api.queues", self.cluster)
    }

    /// The stream that keeps queue deliveries (`NOTIFY`, or `NOTIFY_<cluster>`).
    pub fn notify_stream(&self) -> String {
        self.suffix("NOTIFY")
    }

    /// Where the events matching queue `queue` are published.
    pub fn notify(&self, queue: &str) -> String {
        format!("gossamer.{}.notify.{queue}", self.cluster)
    }

    pub fn notify_wildcard(&self) -> String {
        format!("gossamer.{}.notify.*", self.cluster)
    }

    /// The key-value bucket of settings shared by the cluster (streams' retention).
    pub fn settings_bucket(&self) -> String {
        if self.cluster == "default" {
            "gossamer-settings".to_string()
        } else {
            format!("gossamer-settings-{}", self.cluster)
        }
    }

    /// The key-value bucket of queue definitions.
    pub fn queues_bucket(&self) -> String {
        if self.cluster == "default" {
            "gossamer-queues".to_string()
        } else {
            format!("gossamer-queues-{}", self.cluster)
        }
    }
}
