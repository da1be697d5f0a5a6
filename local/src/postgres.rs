//! A PostgreSQL server kept under a state directory.
//!
//! ```text
//! STATE/data/             the cluster (PGDATA)
//! STATE/run/              its Unix socket
//! STATE/log/postgres.log  its log
//! STATE/secrets/          generated passwords, 0600: postgres.password, OWNER.password
//! ```
//!
//! `initdb`, `pg_ctl` and `postgres` refuse to run as root. When sipstack runs as
//! root they run as the `postgres` system user, which then owns `data`, `run` and
//! `log` and must be able to reach them.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use tokio_postgres::Client;

const SUPERUSER: &str = "postgres";
const SYSTEM_USER: &str = "postgres";
/// Linux limits a Unix socket path to 107 bytes.
const MAX_SOCKET_PATH: usize = 107;
const INITDB_TIMEOUT: Duration = Duration::from_secs(180);
const STATUS_TIMEOUT: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the local PostgreSQL could not be set up, started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    #[error("PostgreSQL {major} is not installed ({missing} is missing); install it with `apt-get install postgresql-{major}`")]
    NotInstalled { major: u32, missing: PathBuf },

    #[error(
        "PostgreSQL refuses to run as root and there is no `{SYSTEM_USER}` system user to run it as; \
         install postgresql-{major} (which creates that user) or run sipstack as an ordinary user"
    )]
    NoSystemUser { major: u32 },

    #[error(
        "PostgreSQL runs as the `{SYSTEM_USER}` user (sipstack runs as root) and that user cannot enter {blocking}, \
         a parent of {data_dir}; use a state directory whose parents every user may enter (e.g. under \
         /var/lib/sipstack), or allow it with `chmod o+x {blocking}`"
    )]
    Unreachable {
        blocking: PathBuf,
        data_dir: PathBuf,
    },

    #[error("{data_dir} holds a PostgreSQL {found} cluster, but PostgreSQL {wanted} is configured; upgrade the data with pg_upgrade or set spec.postgresVersion to {found}")]
    VersionMismatch {
        data_dir: PathBuf,
        found: String,
        wanted: u32,
    },

    #[error("PostgreSQL in {data_dir} is not initialised; run init first")]
    NotInitialised { data_dir: PathBuf },

    #[error("{field}: {problem}; {fix}")]
    Invalid {
        field: String,
        problem: String,
        fix: String,
    },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{program} failed ({status}): {output}")]
    Command {
        program: String,
        status: String,
        output: String,
    },

    #[error("{program} did not finish within {timeout:?}")]
    Timeout { program: String, timeout: Duration },

    #[error(transparent)]
    Db(#[from] sipstack_db::DbError),
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> PostgresError + '_ {
    move |source| PostgresError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The uid and gid the server runs as when sipstack runs as root.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SystemUser {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

/// One PostgreSQL server: its directories, port and binaries.
#[derive(Debug, Clone)]
pub struct LocalPostgres {
    state_dir: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log_dir: PathBuf,
    log_file: PathBuf,
    secrets_dir: PathBuf,
    port: u16,
    major: u32,
    bin_dir: PathBuf,
    start_timeout: Duration,
}

impl LocalPostgres {
    /// A server kept under `state_dir`, listening on 127.0.0.1:`port`, run by the
    /// binaries of PostgreSQL `major` (`/usr/lib/postgresql/MAJOR/bin`). Touches nothing yet.
    pub fn new(state_dir: impl Into<PathBuf>, port: u16, major: u32) -> Self {
        let state_dir = state_dir.into();
        // The programs run with / as working directory, so every path must be absolute.
        let state_dir = std::path::absolute(&state_dir).unwrap_or(state_dir);
        let log_dir = state_dir.join("log");
        Self {
            data_dir: state_dir.join("data"),
            socket_dir: state_dir.join("run"),
            log_file: log_dir.join("postgres.log"),
            log_dir,
            secrets_dir: state_dir.join("secrets"),
            state_dir,
            port,
            major,
            bin_dir: PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")),
            start_timeout: Duration::from_secs(60),
        }
    }

    /// Uses the binaries in `dir` instead of `/usr/lib/postgresql/MAJOR/bin`.
    pub fn with_bin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bin_dir = dir.into();
        self
    }

    /// How long `start` and `stop` wait for the server.
    pub fn with_start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    pub fn major(&self) -> u32 {
        self.major
    }
    /// The superuser's generated password (0600).
    pub fn superuser_password_file(&self) -> PathBuf {
        self.secrets_dir.join(format!("{SUPERUSER}.password"))
    }
    /// The generated password of a database owner role (0600).
    pub fn owner_password_file(&self, owner: &str) -> PathBuf {
        self.secrets_dir.join(format!("{owner}.password"))
    }

    /// Whether `initdb` has run here.
    pub fn is_initialised(&self) -> bool {
        self.data_dir.join("PG_VERSION").is_file()
    }

    /// Creates the cluster if there is none yet: UTF-8, C locale, SCRAM
    /// passwords for every connection, and a generated superuser password.
    /// Returns whether it created one.
    pub async fn init(&self) -> Result<bool, PostgresError> {
        let initdb = self.program("initdb")?;
        let run_as = self.system_user()?;
        if self.is_initialised() {
            self.check_version()?;
            self.prepare_dirs(run_as).await?;
            return Ok(false);
        }
        self.prepare_dirs(run_as).await?;
        let password = load_or_create_secret(&self.superuser_password_file())?;

        // initdb reads the password from a file it can open as the server's user;
        // the file lives only while initdb runs.
        let pwfile = TempSecret::write(&self.socket_dir.join("initdb.pwfile"), &password, run_as)?;
        let mut args: Vec<OsString> = vec![
            "-D".into(),
            self.data_dir.clone().into(),
            "-U".into(),
            SUPERUSER.into(),
            "--auth=scram-sha-256".into(),
            "--encoding=UTF8".into(),
            "--locale=C".into(),
            "--no-instructions".into(),
        ];
        let mut pwfile_arg = OsString::from("--pwfile=");
        pwfile_arg.push(pwfile.path());
        args.push(pwfile_arg);
        tracing::info!(data_dir = %self.data_dir.display(), "initialising PostgreSQL {}", self.major);
        let result = self.run(&initdb, &args, INITDB_TIMEOUT, run_as).await;
        drop(pwfile);
        result?;

        let conf = self.data_dir.join("postgresql.conf");
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(&conf)
            .map_err(io_error(&conf))?;
        file.write_all(b"\n# Address, port and socket directory, rewritten by sipstack on every start.\ninclude_if_exists = 'sipstack.conf'\n")
            .map_err(io_error(&conf))?;
        self.write_server_conf(run_as)?;
        Ok(true)
    }

    /// Starts the server and waits until it accepts connections. Already running is fine.
    pub async fn start(&self) -> Result<(), PostgresError> {
        let pg_ctl = self.program("pg_ctl")?;
        if !self.is_initialised() {
            return Err(PostgresError::NotInitialised {
                data_dir: self.data_dir.clone(),
            });
        }
        self.check_version()?;
        if self.is_running() {
            tracing::debug!(data_dir = %self.data_dir.display(), "PostgreSQL is already running");
            return Ok(());
        }
        let run_as = self.system_user()?;
        self.prepare_dirs(run_as).await?;
        self.write_server_conf(run_as)?;
        let args: Vec<OsString> = vec![
            "start".into(),
            "-w".into(),
            "-t".into(),
            self.start_timeout.as_secs().max(1).to_string().into(),
            "-D".into(),
            self.data_dir.clone().into(),
            "-l".into(),
            self.log_file.clone().into(),
        ];
        tracing::info!(port = self.port, data_dir = %self.data_dir.display(), "starting PostgreSQL");
        let margin = Duration::from_secs(10);
        match self
            .run(&pg_ctl, &args, self.start_timeout + margin, run_as)
            .await
        {
            Ok(_) => Ok(()),
            Err(PostgresError::Command {
                program,
                status,
                output,
            }) => Err(PostgresError::Command {
                program,
                status,
                output: format!(
                    "{output}\nlast lines of {}:\n{}",
                    self.log_file.display(),
                    log_tail(&self.log_file, 15)
                ),
            }),
            Err(e) => Err(e),
        }
    }

    /// Stops the server with a fast shutdown: sessions are ended, committed data is
    /// kept and checkpointed. Returns whether it was running.
    pub async fn stop(&self) -> Result<bool, PostgresError> {
        if !self.is_running() {
            return Ok(false);
        }
        let pg_ctl = self.program("pg_ctl")?;
        let run_as = self.system_user()?;
        let args: Vec<OsString> = vec![
            "stop".into(),
            "-w".into(),
            "-t".into(),
            self.start_timeout.as_secs().max(1).to_string().into(),
            "-m".into(),
            "fast".into(),
            "-D".into(),
            self.data_dir.clone().into(),
        ];
        tracing::info!(data_dir = %self.data_dir.display(), "stopping PostgreSQL");
        match self
            .run(
                &pg_ctl,
                &args,
                self.start_timeout + Duration::from_secs(10),
                run_as,
            )
            .await
        {
            Ok(_) => Ok(true),
            // Stopped by someone else between the check and pg_ctl.
            Err(_) if !self.is_running() => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Whether the server of this data directory runs: its postmaster.pid names a
    /// live `postgres` process.
    pub fn is_running(&self) -> bool {
        let pid_file = self.data_dir.join("postmaster.pid");
        let Some(pid) = fs::read_to_string(&pid_file).ok().and_then(|text| {
            text.lines()
                .next()
                .and_then(|l| l.trim().parse::<u32>().ok())
        }) else {
            return false;
        };
        // The pid of a server that died may have been reused by another program.
        fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == "postgres")
    }

    /// Asks `pg_ctl status` whether the server runs (slower than [`Self::is_running`],
    /// which reads the pid file).
    pub async fn status(&self) -> Result<bool, PostgresError> {
        let pg_ctl = self.program("pg_ctl")?;
        if !self.is_initialised() {
            return Ok(false);
        }
        let run_as = self.system_user()?;
        let args: Vec<OsString> = vec!["status".into(), "-D".into(), self.data_dir.clone().into()];
        match self.run(&pg_ctl, &args, STATUS_TIMEOUT, run_as).await {
            Ok(_) => Ok(true),
            // pg_ctl status exits with 3 when the server is not running.
            Err(PostgresError::Command { status, .. }) if status.contains("exit status: 3") => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Connects as the superuser to the `postgres` database.
    pub async fn connect_superuser(&self) -> Result<Client, PostgresError> {
        let password = read_secret(&self.superuser_password_file())?;
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(self.port)
            .user(SUPERUSER)
            .password(password)
            .dbname("postgres");
        Ok(sipstack_db::connect_with(config, CONNECT_TIMEOUT).await?)
    }

    /// Makes sure role `owner` (LOGIN, generated password kept in the state
    /// directory) and database `db_name` owned by it exist. Returns the URL to
    /// connect with as the owner.
    pub async fn ensure_database(
        &self,
        owner: &str,
        db_name: &str,
    ) -> Result<String, PostgresError> {
        check_identifier("database.owner", owner)?;
        check_identifier("database.name", db_name)?;
        if owner == SUPERUSER {
            return Err(invalid(
                "database.owner",
                "\"postgres\" is the superuser",
                "name an ordinary role, e.g. sipstack",
            ));
        }
        let password = load_or_create_secret(&self.owner_password_file(owner))?;
        // Only the salted verifier travels to the server, never the password.
        let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
        let client = self.connect_superuser().await?;
        sipstack_db::bootstrap::ensure_owner_and_database(&client, owner, &verifier, db_name)
            .await?;
        self.url_for_owner(owner, db_name)
    }

    /// `postgres://OWNER:PASSWORD@127.0.0.1:PORT/DB` with the owner's stored password: the
    /// scheme both libpq and Kamailio (whose module is db_postgres) understand.
    pub fn url_for_owner(&self, owner: &str, db_name: &str) -> Result<String, PostgresError> {
        check_identifier("database.owner", owner)?;
        check_identifier("database.name", db_name)?;
        let password = read_secret(&self.owner_password_file(owner))?;
        // Generated passwords are hex: nothing to percent-encode.
        Ok(format!(
            "postgres://{owner}:{password}@127.0.0.1:{}/{db_name}",
            self.port
        ))
    }

    fn program(&self, name: &str) -> Result<PathBuf, PostgresError> {
        let path = self.bin_dir.join(name);
        if !path.is_file() {
            return Err(PostgresError::NotInstalled {
                major: self.major,
                missing: path,
            });
        }
        Ok(path)
    }

    /// The user to run the server as: `None` to run it as ourselves.
    fn system_user(&self) -> Result<Option<SystemUser>, PostgresError> {
        system_user(self.major)
    }

    fn check_version(&self) -> Result<(), PostgresError> {
        let path = self.data_dir.join("PG_VERSION");
        let found = fs::read_to_string(&path)
            .map_err(io_error(&path))?
            .trim()
            .to_string();
        if found != self.major.to_string() {
            return Err(PostgresError::VersionMismatch {
                data_dir: self.data_dir.clone(),
                found,
                wanted: self.major,
            });
        }
        Ok(())
    }

    /// Creates the directories with their owners and modes, and checks the
    /// server's user can reach the data directory.
    async fn prepare_dirs(&self, run_as: Option<SystemUser>) -> Result<(), PostgresError> {
        let socket_path_len = self.socket_dir.as_os_str().len() + "/.s.PGSQL.65535".len();
        if socket_path_len > MAX_SOCKET_PATH {
            return Err(invalid(
                "state directory",
                format!(
                    "{} is too long for a Unix socket path ({socket_path_len} > {MAX_SOCKET_PATH} bytes)",
                    self.socket_dir.display()
                ),
                "use a shorter state directory",
            ));
        }
        for path in [&self.socket_dir, &self.data_dir] {
            let text = path.to_string_lossy();
            if text.contains(['\'', '\\']) || text.chars().any(char::is_control) {
                return Err(invalid(
                    "state directory",
                    format!("{text:?} contains a quote, backslash or control character"),
                    "use a plain directory path",
                ));
            }
        }
        for (dir, mode) in [(&self.state_dir, 0o755), (&self.secrets_dir, 0o700)] {
            create_dir(dir, mode)?;
        }
        // The socket directory lets local users reach the socket; the password still applies.
        for (dir, mode) in [
            (&self.data_dir, 0o700),
            (&self.socket_dir, 0o755),
            (&self.log_dir, 0o750),
        ] {
            create_dir(dir, mode)?;
            if let Some(user) = run_as {
                std::os::unix::fs::chown(dir, Some(user.uid), Some(user.gid))
                    .map_err(io_error(dir))?;
            }
        }
        if run_as.is_some() {
            self.check_reachable().await?;
        }
        Ok(())
    }

    async fn check_reachable(&self) -> Result<(), PostgresError> {
        if self.can_system_user_enter(&self.data_dir).await? {
            return Ok(());
        }
        // Name the first directory on the way that the user cannot enter.
        let mut blocking = self.data_dir.clone();
        for dir in self
            .data_dir
            .ancestors()
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            if !self.can_system_user_enter(dir).await? {
                blocking = dir.to_path_buf();
                break;
            }
        }
        Err(PostgresError::Unreachable {
            blocking,
            data_dir: self.data_dir.clone(),
        })
    }

    async fn can_system_user_enter(&self, dir: &Path) -> Result<bool, PostgresError> {
        let status = Command::new("runuser")
            .args(["-u", SYSTEM_USER, "--", "test", "-x"])
            .arg(dir)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .status();
        match tokio::time::timeout(STATUS_TIMEOUT, status).await {
            Ok(Ok(status)) => Ok(status.success()),
            Ok(Err(source)) => Err(PostgresError::Io {
                path: PathBuf::from("runuser"),
                source,
            }),
            Err(_) => Err(PostgresError::Timeout {
                program: "runuser".into(),
                timeout: STATUS_TIMEOUT,
            }),
        }
    }

    /// The settings that depend on this instance, read through `include_if_exists`.
    fn write_server_conf(&self, run_as: Option<SystemUser>) -> Result<(), PostgresError> {
        let path = self.data_dir.join("sipstack.conf");
        let text = format!(
            "# Written by sipstack on every start; changes here are overwritten.\n\
             listen_addresses = '127.0.0.1'\n\
             port = {}\n\
             unix_socket_directories = '{}'\n",
            self.port,
            self.socket_dir.display()
        );
        fs::write(&path, text).map_err(io_error(&path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).map_err(io_error(&path))?;
        if let Some(user) = run_as {
            std::os::unix::fs::chown(&path, Some(user.uid), Some(user.gid))
                .map_err(io_error(&path))?;
        }
        Ok(())
    }

    /// Runs a PostgreSQL program, as the server's user when we are root; returns its output.
    async fn run(
        &self,
        program: &Path,
        args: &[OsString],
        timeout: Duration,
        run_as: Option<SystemUser>,
    ) -> Result<String, PostgresError> {
        let mut command = match run_as {
            Some(_) => {
                let mut c = Command::new("runuser");
                c.args(["-u", SYSTEM_USER, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        };
        command
            .args(args)
            // A working directory the server's user may not enter (e.g. /root) breaks initdb.
            .current_dir("/")
            .env("LC_ALL", "C")
            .env_remove("PGDATA")
            .env_remove("PGPORT")
            .env_remove("PGHOST")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let name = program
            .file_name()
            .unwrap_or(OsStr::new("postgres"))
            .to_string_lossy()
            .into_owned();
        let output = match tokio::time::timeout(timeout, command.output()).await {
            Ok(Ok(output)) => output,
            Ok(Err(source)) => {
                return Err(PostgresError::Io {
                    path: program.to_path_buf(),
                    source,
                })
            }
            Err(_) => {
                return Err(PostgresError::Timeout {
                    program: name,
                    timeout,
                })
            }
        };
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if !output.status.success() {
            return Err(PostgresError::Command {
                program: name,
                status: output.status.to_string(),
                output: text.trim().to_string(),
            });
        }
        tracing::debug!(program = %name, output = %text.trim(), "finished");
        Ok(text)
    }
}

/// The user PostgreSQL (and the programs that manage it) run as: `None` to run
/// them as ourselves, the `postgres` system user when we are root.
pub(crate) fn system_user(major: u32) -> Result<Option<SystemUser>, PostgresError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    match nix::unistd::User::from_name(SYSTEM_USER) {
        Ok(Some(user)) => Ok(Some(SystemUser {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        })),
        _ => Err(PostgresError::NoSystemUser { major }),
    }
}

fn invalid(field: &str, problem: impl Into<String>, fix: impl Into<String>) -> PostgresError {
    PostgresError::Invalid {
        field: field.into(),
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// Role and database names the platform accepts, `^[a-z_][a-z0-9_]{0,62}$`: they never need quoting.
fn is_db_identifier(value: &str) -> bool {
    let mut chars = value.chars();
    value.len() <= 63
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn check_identifier(field: &str, value: &str) -> Result<(), PostgresError> {
    if !is_db_identifier(value) {
        return Err(invalid(
            field,
            format!("{value:?} is not a PostgreSQL name the platform accepts"),
            "use at most 63 lower-case letters, digits and '_', not starting with a digit (e.g. sipstack)",
        ));
    }
    Ok(())
}

pub(crate) fn create_dir(dir: &Path, mode: u32) -> Result<(), PostgresError> {
    if !dir.is_dir() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(dir)
            .map_err(io_error(dir))?;
    }
    Ok(())
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// 32 random bytes from the kernel as hex: safe in URLs, config files and SQL literals.
fn generate_password() -> Result<String, PostgresError> {
    let path = Path::new("/dev/urandom");
    let mut bytes = [0u8; 32];
    fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(io_error(path))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

pub(crate) fn read_secret(path: &Path) -> Result<String, PostgresError> {
    let secret = fs::read_to_string(path)
        .map_err(io_error(path))?
        .trim()
        .to_string();
    if secret.is_empty() {
        return Err(PostgresError::Io {
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidData, "the password file is empty"),
        });
    }
    Ok(secret)
}

/// Reads a generated secret, creating it (0600) the first time.
pub(crate) fn load_or_create_secret(path: &Path) -> Result<String, PostgresError> {
    if path.exists() {
        let secret = read_secret(path)?;
        let mode = fs::metadata(path)
            .map_err(io_error(path))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io_error(path))?;
        }
        return Ok(secret);
    }
    let secret = generate_password()?;
    let created = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    match created {
        Ok(mut file) => {
            file.write_all(secret.as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(io_error(path))?;
            Ok(secret)
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read_secret(path),
        Err(e) => Err(io_error(path)(e)),
    }
}

/// A password file for one program run, removed when dropped.
struct TempSecret {
    path: PathBuf,
}

impl TempSecret {
    fn write(path: &Path, secret: &str, owner: Option<SystemUser>) -> Result<Self, PostgresError> {
        let _ = fs::remove_file(path);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io_error(path))?;
        let guard = TempSecret {
            path: path.to_path_buf(),
        };
        file.write_all(secret.as_bytes()).map_err(io_error(path))?;
        if let Some(user) = owner {
            std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
                .map_err(io_error(path))?;
        }
        Ok(guard)
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempSecret {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove a temporary password file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_under_the_state_directory() {
        let pg = LocalPostgres::new("/var/lib/sipstack/local/pg-main", 5433, 15);
        assert_eq!(
            pg.data_dir(),
            Path::new("/var/lib/sipstack/local/pg-main/data")
        );
        assert_eq!(
            pg.socket_dir(),
            Path::new("/var/lib/sipstack/local/pg-main/run")
        );
        assert_eq!(
            pg.log_file(),
            Path::new("/var/lib/sipstack/local/pg-main/log/postgres.log")
        );
        assert_eq!(
            pg.owner_password_file("sipstack"),
            Path::new("/var/lib/sipstack/local/pg-main/secrets/sipstack.password")
        );
        assert_eq!(pg.port(), 5433);
    }

    #[test]
    fn missing_binaries_say_what_to_install() {
        let pg = LocalPostgres::new("/tmp/x", 5433, 15).with_bin_dir("/nonexistent/bin");
        let err = pg.program("initdb").unwrap_err().to_string();
        assert!(err.contains("apt-get install postgresql-15"), "{err}");
    }

    #[test]
    fn identifiers_are_checked() {
        assert!(check_identifier("n", "sipstack").is_ok());
        assert!(check_identifier("n", "_a1").is_ok());
        for bad in ["", "1a", "Sip", "a-b", "a;drop", &"a".repeat(64)] {
            assert!(check_identifier("n", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn secrets_are_generated_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("owner.password");
        let first = load_or_create_secret(&path).unwrap();
        assert_eq!(first.len(), 64);
        assert!(first.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(load_or_create_secret(&path).unwrap(), first);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(load_or_create_secret(&path).unwrap(), first);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn not_running_without_a_pid_file() {
        let dir = tempfile::tempdir().unwrap();
        let pg = LocalPostgres::new(dir.path(), 5433, 15);
        assert!(!pg.is_running());
        fs::create_dir_all(pg.data_dir()).unwrap();
        // A pid that is not a postgres process (this test) does not count.
        fs::write(
            pg.data_dir().join("postmaster.pid"),
            format!("{}\n", std::process::id()),
        )
        .unwrap();
        assert!(!pg.is_running());
    }

    #[test]
    fn long_state_directories_are_refused_before_starting() {
        let long = format!("/tmp/{}", "d".repeat(120));
        let pg = LocalPostgres::new(long, 5433, 15);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let err = rt.block_on(pg.prepare_dirs(None)).unwrap_err().to_string();
        assert!(err.contains("too long for a Unix socket path"), "{err}");
    }
}
