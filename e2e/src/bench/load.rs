//! Load steps whose offered rate goes up until failures or retransmissions appear.

#[allow(unused_imports)]
use super::*;

/// What a load step sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadKind {
    /// REGISTER, 401, REGISTER with credentials, 200 (bench_register.xml).
    Register,
    /// INVITE, 407, ACK, INVITE with credentials, 200, ACK, BYE, 200 (bench_uac_call.xml).
    Call,
}

impl LoadKind {
    pub fn name(self) -> &'static str {
        match self {
            LoadKind::Register => "REGISTER",
            LoadKind::Call => "INVITE",
        }
    }
}

/// Everything of a load that stays the same from step to step.
#[derive(Debug, Clone)]
pub struct Load {
    pub kind: LoadKind,
    pub target: SocketAddr,
    /// SIPp's own UDP port (fixed, so a user's contact stays the same).
    pub local_port: u16,
    pub users: u32,
    pub injection: InjectionFile,
    /// Main pid of the Kamailio under test, for its CPU time.
    pub kamailio_pid: Option<i32>,
    /// Log of the Kamailio under test and a line that means it banned the load
    /// generator (our flood protection): such a step is an error, not a result.
    pub ban_marker: Option<(PathBuf, String)>,
    /// PostgreSQL's postmaster, for the database's CPU time.
    pub postgres_pid: Option<i32>,
    /// Our edge's RPC: before each step, wait until every dispatcher destination
    /// is active again (an overloaded step can leave the media nodes marked
    /// inactive, which would spoil the next step with 503s).
    pub dispatcher_rpc: Option<sipstack_edgerpc::EdgeRpc>,
    /// The media stand-ins (SIPp), for their CPU time.
    pub standin_pids: Vec<i32>,
    /// Log of the Kamailio under test, searched for out-of-memory errors.
    pub log: Option<PathBuf>,
}

/// How many lines of a Kamailio log say it ran out of shared memory.
pub fn out_of_memory_lines(log: &Path) -> u64 {
    let text = fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter(|l| l.contains("could not allocate shared memory") || l.contains("out of mem"))
        .count() as u64
}

impl Load {
    pub fn new(
        kind: LoadKind,
        target: SocketAddr,
        local_port: u16,
        users: u32,
        kamailio_pid: Option<i32>,
    ) -> Self {
        let mut injection = InjectionFile::sequential();
        for i in 1..=users {
            let (user, password) = bench_user(i);
            let auth = InjectionFile::auth_keyword(&user, &password);
            let last = match kind {
                LoadKind::Register => format!("sip:{user}@{LOAD_IP}:{local_port}"),
                LoadKind::Call => CALLEES[(i % 2) as usize].to_string(),
            };
            injection = injection.line([user, DOMAIN.to_string(), auth, last]);
        }
        Self {
            kind,
            target,
            local_port,
            users,
            injection,
            kamailio_pid,
            ban_marker: None,
            postgres_pid: None,
            dispatcher_rpc: None,
            standin_pids: Vec::new(),
            log: None,
        }
    }

    pub fn with_log(mut self, log: PathBuf) -> Self {
        self.log = Some(log);
        self
    }

    pub fn with_standin_pids(mut self, pids: Vec<i32>) -> Self {
        self.standin_pids = pids;
        self
    }

    pub fn with_postgres_pid(mut self, pid: Option<i32>) -> Self {
        self.postgres_pid = pid;
        self
    }

    pub fn with_dispatcher_rpc(mut self, rpc: sipstack_edgerpc::EdgeRpc) -> Self {
        self.dispatcher_rpc = Some(rpc);
        self
    }

    /// Waits until every destination is active (at most 30 s); returns how
    /// long that took.
    async fn wait_for_active_destinations(&self) -> Result<Duration> {
        let Some(rpc) = &self.dispatcher_rpc else {
            return Ok(Duration::ZERO);
        };
        let start = Instant::now();
        loop {
            let list = rpc.dispatcher_list().await.context("dispatcher.list")?;
            if !list.is_empty() && list.iter().all(|d| d.is_active()) {
                return Ok(start.elapsed());
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!("the media nodes did not become active again within 30 s: {list:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Fails the steps after which `log` holds `marker` (e.g. our flood
    /// protection's ban message).
    pub fn with_ban_marker(mut self, log: PathBuf, marker: &str) -> Self {
        self.ban_marker = Some((log, marker.to_string()));
        self
    }

    fn check_not_banned(&self) -> Result<()> {
        if let Some((log, marker)) = &self.ban_marker {
            let text = fs::read_to_string(log).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.contains(marker.as_str())) {
                bail!(
                    "the edge banned the load generator (flood protection), so the figures would be wrong; \
                     raise the flood limit or lower the rate. Log line: {}",
                    line.trim()
                );
            }
        }
        Ok(())
    }

    fn command(&self, rate: u32, calls: u64, duration: Duration) -> SippCommand {
        let scenario = match self.kind {
            LoadKind::Register => "bench_register",
            LoadKind::Call => "bench_uac_call",
        };
        let mut cmd = SippCommand::scenario(scenario)
            .remote(self.target)
            .local(LOAD_IP, self.local_port)
            .injection(self.injection.clone())
            .rate(rate)
            .max_calls(calls)
            // a step that cannot keep up shows it as a lower rate, not as a
            // SIPp that piles up unbounded open calls
            .call_limit(rate.max(50) * 2)
            // a lost answer fails its call after 5 s, not after SIPp's 32 s of retransmissions
            .recv_timeout(Duration::from_secs(5))
            .deadline(duration * 2 + Duration::from_secs(20));
        if self.kind == LoadKind::Register {
            cmd = cmd.key("expires", "600");
        } else {
            cmd = cmd.pause(Duration::ZERO);
        }
        cmd
    }

    /// Offers `rate` new calls/registrations per second for `duration`.
    pub async fn step(&self, rate: u32, duration: Duration) -> Result<StepResult> {
        let calls = (f64::from(rate) * duration.as_secs_f64()).round().max(1.0) as u64;
        let waited = self.wait_for_active_destinations().await?;
        let cpu_before = self.kamailio_pid.map(process_tree_cpu);
        let pg_before = self.postgres_pid.map(process_tree_cpu);
        let oom_before = self.log.as_deref().map(out_of_memory_lines).unwrap_or(0);
        let standins_before: Vec<Option<Duration>> =
            self.standin_pids.iter().map(|p| process_cpu(*p)).collect();
        let (outcome, sipp_cpu) = run_sipp_measured(self.command(rate, calls, duration)).await?;
        let standin_cpu = self
            .standin_pids
            .iter()
            .zip(standins_before)
            .filter_map(|(pid, before)| Some(process_cpu(*pid)?.saturating_sub(before?)))
            .max()
            .unwrap_or_default();
        let since = |before: Option<Duration>, pid: Option<i32>| match (before, pid) {
            (Some(before), Some(pid)) => Some(process_tree_cpu(pid).saturating_sub(before)),
            _ => None,
        };
        let cpu = since(cpu_before, self.kamailio_pid);
        let pg_cpu = since(pg_before, self.postgres_pid);

        self.check_not_banned()?;
        let out_of_memory = self
            .log
            .as_deref()
            .map(out_of_memory_lines)
            .unwrap_or(0)
            .saturating_sub(oom_before);
        let Some(stats) = &outcome.stats else {
            bail!("SIPp wrote no statistics:\n{}", outcome.diagnostics());
        };
        let mut codes = BTreeMap::new();
        for code in &outcome.unexpected_codes {
            *codes.entry(*code).or_insert(0u64) += 1;
        }
        let result = StepResult {
            offered: rate,
            calls,
            created: stats.total_created(),
            successful: stats.successful(),
            failed: stats.failed(),
            retransmissions: stats.retransmissions(),
            elapsed: outcome.elapsed,
            kamailio_cpu: cpu,
            postgres_cpu: pg_cpu,
            sipp_cpu,
            standin_cpu,
            out_of_memory,
            waited_for_media: waited,
            unexpected_codes: codes,
            exit: outcome.exit,
            attempt: 1,
        };
        if matches!(
            outcome.exit,
            SippExit::Fatal(_) | SippExit::BindFailed | SippExit::Other(_) | SippExit::Signal(_)
        ) {
            bail!(
                "SIPp did not run the step ({result}):\n{}",
                outcome.diagnostics()
            );
        }
        Ok(result)
    }

    /// A short run that must succeed completely: the config under test works.
    pub async fn warm_up(&self) -> Result<StepResult> {
        let result = self.step(100, Duration::from_secs(1)).await?;
        if result.successful != result.calls || result.failed != 0 {
            bail!("warm-up of {} failed: {result}", self.kind.name());
        }
        Ok(result)
    }

    /// One step at `rate`, run a second time when the first run was only
    /// [`transient`](StepResult::transient); the second run decides. Returns
    /// the deciding run and the transient one, if any.
    async fn decided_step(
        &self,
        rate: u32,
        duration: Duration,
        settle: Duration,
        report: &mut impl FnMut(&StepResult),
    ) -> Result<(StepResult, Option<StepResult>)> {
        let first = self.step(rate, duration).await?;
        report(&first);
        tokio::time::sleep(settle).await;
        if !first.transient() {
            return Ok((first, None));
        }
        let mut second = self.step(rate, duration).await?;
        second.attempt = 2;
        report(&second);
        tokio::time::sleep(settle).await;
        Ok((second, Some(first)))
    }

    /// Steps the offered rate through `rates` until a step is not clean, then
    /// bisects between the last clean and the first unclean rate `refine`
    /// times. A step with only a few retransmissions and nothing else wrong
    /// runs once more (see [`StepResult::transient`]). `report` sees every run
    /// as it ends.
    pub async fn ramp(
        &self,
        rates: &[u32],
        refine: u32,
        duration: Duration,
        settle: Duration,
        mut report: impl FnMut(&StepResult),
    ) -> Result<Ramp> {
        let mut ramp = Ramp::default();
        let mut clean_rate: Option<u32> = None;
        let mut unclean_rate: Option<u32> = None;
        for &rate in rates {
            let (step, transient) = self
                .decided_step(rate, duration, settle, &mut report)
                .await?;
            ramp.transients.extend(transient);
            let clean = step.clean();
            ramp.steps.push(step);
            if clean {
                clean_rate = Some(rate);
            } else {
                unclean_rate = Some(rate);
                break;
            }
        }
        if let Some(mut high) = unclean_rate {
            let mut low = clean_rate.unwrap_or(0);
            for _ in 0..refine {
                // halfway, rounded to 50/s
                let mid = (low + high) / 2 / 50 * 50;
                if mid <= low || mid >= high || mid == 0 {
                    break;
                }
                let (step, transient) = self
                    .decided_step(mid, duration, settle, &mut report)
                    .await?;
                ramp.transients.extend(transient);
                let clean = step.clean();
                ramp.steps.push(step);
                if clean {
                    low = mid;
                } else {
                    high = mid;
                }
            }
        }
        ramp.saturated = unclean_rate.is_some();
        Ok(ramp)
    }
}

/// One step: a SIPp run at one offered rate.
#[derive(Debug, Clone)]
pub struct StepResult {
    /// Offered rate (SIPp's `-r`), per second.
    pub offered: u32,
    /// Calls the step was to make (`-m`).
    pub calls: u64,
    pub created: u64,
    pub successful: u64,
    pub failed: u64,
    /// SIPp's retransmissions: an answer not there after 500 ms (and again later).
    pub retransmissions: u64,
    pub elapsed: Duration,
    pub kamailio_cpu: Option<Duration>,
    pub postgres_cpu: Option<Duration>,
    /// CPU time of the load-generating SIPp.
    pub sipp_cpu: Duration,
    /// CPU time of the busiest media stand-in (SIPp) during the step.
    pub standin_cpu: Duration,
    /// Lines of the Kamailio log about running out of shared memory.
    pub out_of_memory: u64,
    /// How long the step waited for the media nodes to be active again.
    pub waited_for_media: Duration,
    pub unexpected_codes: BTreeMap<u16, u64>,
    pub exit: SippExit,
    /// 1, or 2 for the second run of a step whose first run was transient.
    pub attempt: u32,
}

/// A step keeps up when it finishes within this factor of its nominal length
/// (plus [`KEEP_UP_SLACK`] for SIPp's start and the last answers).
pub const KEEP_UP_FACTOR: f64 = 1.05;
pub const KEEP_UP_SLACK: Duration = Duration::from_millis(300);
/// A step with at most one retransmission per this many calls (and nothing
/// else wrong) is run again: see [`StepResult::transient`].
pub const TRANSIENT_RETRANS_PER: u64 = 2000;

impl StepResult {
    /// Completed calls per second over the whole SIPp run.
    pub fn achieved(&self) -> f64 {
        self.successful as f64 / self.elapsed.as_secs_f64().max(0.001)
    }

    /// Nominal length of the step: calls / offered rate.
    pub fn nominal(&self) -> Duration {
        Duration::from_secs_f64(self.calls as f64 / f64::from(self.offered.max(1)))
    }

    /// Whether SIPp finished the step in about its nominal time (else the
    /// offered rate was not reached: the server, or SIPp itself, fell behind).
    pub fn kept_up(&self) -> bool {
        self.elapsed <= self.nominal().mul_f64(KEEP_UP_FACTOR) + KEEP_UP_SLACK
    }

    /// The criterion of a sustained rate: every call succeeded, not one
    /// retransmission, and the rate was kept.
    pub fn clean(&self) -> bool {
        self.failed == 0
            && self.retransmissions == 0
            && self.successful == self.calls
            && self.kept_up()
            && self.out_of_memory == 0
    }

    /// Not clean only because of a handful of retransmissions: every call
    /// succeeded, the rate was kept, and at most 1 in 2 000 calls saw one. On
    /// a shared 2-core machine a single scheduling hiccup does that, so such a
    /// step runs once more and the second run decides.
    pub fn transient(&self) -> bool {
        !self.clean()
            && self.attempt == 1
            && self.failed == 0
            && self.successful == self.calls
            && self.kept_up()
            && self.retransmissions * TRANSIENT_RETRANS_PER <= self.calls
    }

    /// Kamailio CPU time per successful call, in milliseconds.
    pub fn cpu_per_call_ms(&self) -> Option<f64> {
        let cpu = self.kamailio_cpu?;
        (self.successful > 0).then(|| cpu.as_secs_f64() * 1000.0 / self.successful as f64)
    }

    /// SIPp's CPU time over the step's time: near 1.0, SIPp itself (one
    /// thread) is the limit, not the server.
    pub fn sipp_load(&self) -> f64 {
        self.sipp_cpu.as_secs_f64() / self.elapsed.as_secs_f64().max(0.001)
    }

    /// PostgreSQL CPU time per successful call, in milliseconds.
    pub fn pg_cpu_per_call_ms(&self) -> Option<f64> {
        let cpu = self.postgres_cpu?;
        (self.successful > 0).then(|| cpu.as_secs_f64() * 1000.0 / self.successful as f64)
    }

    /// Why the step is not clean, or "clean".
    pub fn verdict(&self) -> String {
        let mut why = Vec::new();
        if self.failed > 0 {
            why.push(format!("{} failed", self.failed));
        }
        if self.retransmissions > 0 {
            why.push(format!("{} retransmissions", self.retransmissions));
        }
        let missing = self.calls.saturating_sub(self.successful + self.failed);
        if missing > 0 {
            why.push(format!("{missing} unfinished"));
        }
        if !self.kept_up() {
            why.push(format!(
                "took {:.2} s for {:.2} s of load",
                self.elapsed.as_secs_f64(),
                self.nominal().as_secs_f64()
            ));
        }
        if self.out_of_memory > 0 {
            why.push(format!(
                "Kamailio out of shared memory ({} log lines; see --shm-mb)",
                self.out_of_memory
            ));
        }
        if !self.unexpected_codes.is_empty() {
            let codes: Vec<String> = self
                .unexpected_codes
                .iter()
                .map(|(c, n)| format!("{c}x{n}"))
                .collect();
            why.push(format!("unexpected answers {}", codes.join(" ")));
        }
        if why.is_empty() {
            "clean".into()
        } else {
            why.join(", ")
        }
    }
}

impl fmt::Display for StepResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "offered {:>6}/s: {:>6} ok of {:>6}, {:>5} failed, {:>5} retrans, {:>8.1}/s achieved in {:>5.2} s",
            self.offered,
            self.successful,
            self.calls,
            self.failed,
            self.retransmissions,
            self.achieved(),
            self.elapsed.as_secs_f64()
        )?;
        if let Some(ms) = self.cpu_per_call_ms() {
            write!(f, ", CPU ms/call: Kamailio {ms:.3}")?;
            if let Some(pg) = self.pg_cpu_per_call_ms() {
                write!(f, " PostgreSQL {pg:.3}")?;
            }
        }
        write!(f, ", SIPp {:.0} % of a CPU", self.sipp_load() * 100.0)?;
        if self.standin_cpu > Duration::ZERO {
            let load = self.standin_cpu.as_secs_f64() / self.elapsed.as_secs_f64().max(0.001);
            write!(f, " (busiest stand-in {:.0} %)", load * 100.0)?;
        }
        if self.waited_for_media > Duration::from_millis(500) {
            write!(
                f,
                " (waited {:.1} s for the media nodes)",
                self.waited_for_media.as_secs_f64()
            )?;
        }
        write!(f, " -> {}", self.verdict())?;
        if self.transient() {
            write!(f, " (transient: run again)")?;
        } else if self.attempt == 2 {
            write!(f, " (second run decides)")?;
        }
        Ok(())
    }
}

/// The steps of one load against one config.
#[derive(Debug, Clone, Default)]
pub struct Ramp {
    pub steps: Vec<StepResult>,
    /// Whether some step was not clean (else the highest step offered is only a
    /// lower bound of what the config sustains).
    pub saturated: bool,
    /// First runs that were transient and ran again (not in `steps`).
    pub transients: Vec<StepResult>,
}

impl Ramp {
    /// The highest clean step: the sustained rate.
    pub fn sustained(&self) -> Option<&StepResult> {
        self.steps
            .iter()
            .filter(|s| s.clean())
            .max_by_key(|s| s.offered)
    }

    /// The lowest step that was not clean.
    pub fn first_unclean(&self) -> Option<&StepResult> {
        self.steps
            .iter()
            .filter(|s| !s.clean())
            .min_by_key(|s| s.offered)
    }

    pub fn step_at(&self, rate: u32) -> Option<&StepResult> {
        self.steps.iter().find(|s| s.offered == rate)
    }

    pub fn total_failed(&self) -> u64 {
        self.steps.iter().map(|s| s.failed).sum()
    }

    /// Retransmissions over every run, the transient first runs included.
    pub fn total_retransmissions(&self) -> u64 {
        self.steps
            .iter()
            .chain(&self.transients)
            .map(|s| s.retransmissions)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stock_config_gets_only_the_announced_changes() {
        let Ok(stock) = fs::read_to_string(STOCK_CONFIG) else {
            return;
        };
        let addr: SocketAddr = "127.0.0.1:15060".parse().unwrap();
        let text = stock_config(
            &stock,
            "postgres://u:p@127.0.0.1:5432/db",
            addr,
            8,
            Path::new("/tmp/x"),
        )
        .unwrap();
        assert!(text.starts_with("#!KAMAILIO\n"));
        for line in [
            "#!define WITH_AUTH",
            "#!define WITH_USRLOCDB",
            "#!define DBURL \"postgres://u:p@127.0.0.1:5432/db\"",
            "loadmodule \"db_postgres.so\"",
            "listen=udp:127.0.0.1:15060",
            "alias=\"example.com\"",
            "modparam(\"ctl\", \"binrpc\", \"unix:/tmp/x/kamailio_ctl\")",
        ] {
            assert!(text.contains(line), "{line} missing");
        }
        assert!(!text.contains("db_mysql.so"));
        assert!(
            text.contains("modparam(\"auth_db\", \"calculate_ha1\", yes)"),
            "still the plaintext password check"
        );
    }

    #[test]
    fn a_step_is_clean_only_without_failures_retransmissions_and_delay() {
        let step = StepResult {
            offered: 1000,
            calls: 5000,
            created: 5000,
            successful: 5000,
            failed: 0,
            retransmissions: 0,
            elapsed: Duration::from_millis(5100),
            kamailio_cpu: None,
            postgres_cpu: None,
            sipp_cpu: Duration::ZERO,
            standin_cpu: Duration::ZERO,
            out_of_memory: 0,
            waited_for_media: Duration::ZERO,
            unexpected_codes: BTreeMap::new(),
            exit: SippExit::AllSucceeded,
            attempt: 1,
        };
        assert!(step.clean(), "{}", step.verdict());
        assert!(!StepResult {
            retransmissions: 1,
            ..step.clone()
        }
        .clean());
        assert!(!StepResult {
            failed: 1,
            successful: 4999,
            ..step.clone()
        }
        .clean());
        assert!(!StepResult {
            elapsed: Duration::from_secs(7),
            ..step.clone()
        }
        .clean());
        assert!(StepResult {
            retransmissions: 2,
            ..step.clone()
        }
        .transient());
        assert!(!StepResult {
            retransmissions: 2,
            attempt: 2,
            ..step.clone()
        }
        .transient());
        assert!(!StepResult {
            retransmissions: 3,
            ..step.clone()
        }
        .transient());
        assert!(!StepResult {
            retransmissions: 1,
            failed: 1,
            successful: 4999,
            ..step.clone()
        }
        .transient());
    }
}
