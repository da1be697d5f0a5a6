//! Our platform brought up for load.

#[allow(unused_imports)]
use super::*;

/// Our platform (PostgreSQL, schema, media pool, rendered Kamailio) in a
/// temporary state directory, like [`crate::testbed::Testbed`] but with the
/// shared memory size chosen here; stopped when dropped.
pub struct BenchPlatform {
    dir: Option<TempDir>,
    pub ports: Ports,
    pub yaml: String,
    pub state: LocalState,
    pub db_url: String,
}

impl BenchPlatform {
    /// Brings `spec` up with `sharedMemoryMb: shared_memory_mb` and, when the
    /// spec has flood protection on, `windowSeconds: flood_window_seconds`.
    pub async fn up(
        spec: &TestbedSpec,
        shared_memory_mb: u32,
        flood_window_seconds: u32,
    ) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("sipstack-bench-")
            .tempdir()
            .context("temporary state dir")?;
        // PostgreSQL runs as the postgres user when we run as root.
        fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        let ports = Ports::free()?;
        let yaml = spec.yaml(ports);
        let shm_line = "sharedMemoryMb: 256";
        if !yaml.contains(shm_line) {
            bail!("the testbed platform file no longer says `{shm_line}`; update edge-bench");
        }
        let mut yaml = yaml.replace(shm_line, &format!("sharedMemoryMb: {shared_memory_mb}"));
        if let Some(n) = spec.flood_requests_per_window {
            let flood_line = format!("floodProtection: {{enabled: true, requestsPerWindow: {n}}}");
            if !yaml.contains(&flood_line) {
                bail!("the testbed platform file no longer says `{flood_line}`; update edge-bench");
            }
            yaml = yaml.replace(
                &flood_line,
                &format!(
                    "floodProtection: {{enabled: true, requestsPerWindow: {n}, windowSeconds: {flood_window_seconds}}}"
                ),
            );
        }
        let options = UpOptions {
            state_dir: dir.path().to_path_buf(),
            standins: false,
        };
        let (state, _report) = match sipstack_local::up(&yaml, &options).await {
            Ok(ok) => ok,
            Err(e) => {
                let _ = sipstack_local::down(dir.path()).await;
                return Err(anyhow::Error::new(e).context(format!("local up of:\n{yaml}")));
            }
        };
        let db_url = state.db_url()?;
        Ok(Self {
            dir: Some(dir),
            ports,
            yaml,
            state,
            db_url,
        })
    }

    pub fn edge(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.ports.sip)
    }

    fn kamailio(&self) -> LocalKamailio {
        LocalKamailio::new(&self.state.state_dir, &self.state.edges[0].name)
    }

    /// Pid of our running Kamailio (its main process).
    pub fn edge_pid(&self) -> Option<i32> {
        self.kamailio().running_pid()
    }

    pub fn edge_config(&self) -> PathBuf {
        self.state.edges[0].config.clone()
    }

    pub fn edge_log(&self) -> PathBuf {
        self.state.edges[0].log.clone()
    }

    /// Stops our Kamailio only (PostgreSQL keeps running for the stock one).
    pub async fn stop_edge(&self) -> Result<()> {
        self.kamailio().stop().await?;
        Ok(())
    }

    /// Starts our Kamailio again after [`stop_edge`](Self::stop_edge) (the
    /// local driver starts what is not running).
    pub async fn start_edge(&self) -> Result<()> {
        let options = UpOptions {
            state_dir: self.state.state_dir.clone(),
            standins: false,
        };
        sipstack_local::up(&self.yaml, &options)
            .await
            .context("starting our edge again")?;
        Ok(())
    }

    pub async fn db(&self) -> Result<Client> {
        Ok(sipstack_db::connect(&self.db_url, Duration::from_secs(10)).await?)
    }

    pub async fn down(mut self) -> Result<()> {
        if let Some(dir) = self.dir.take() {
            sipstack_local::down(dir.path()).await?;
        }
        Ok(())
    }
}

impl Drop for BenchPlatform {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            crate::testbed::tear_down(dir);
        }
    }
}
