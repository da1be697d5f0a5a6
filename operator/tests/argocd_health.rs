//! The Argo CD health checks of charts/sipstack/argocd/: each script, run by a real Lua
//! interpreter (`lua5.3`) the way Argo CD runs it, against the status the controllers
//! write. The fixtures in tests/fixtures/argocd/ are made here by the controllers
//! themselves (the scenarios of tests/controller.rs, against the same fake API
//! server), so they cannot drift from what the operator reports.
//!
//! `SIPSTACK_UPDATE_GOLDEN=1 cargo test -p sipstack-operator --test argocd_health`
//! rewrites the fixtures and the argocd-cm snippets after a deliberate change.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use serde_json::{json, Value};
use sipstack_crds::{MediaPool, PgCluster, SipEdge};
use sipstack_operator::controller;
use sipstack_operator::controller::mediapool::DISPATCHER_FINALIZER;
use support::{example, setup, FakeApi, NAMESPACE};

/// The kinds, with the script of each under charts/sipstack/argocd/health/ (one
/// serves all three: their statuses share the conditions).
const KINDS: &[(&str, &str)] = &[
    ("SipEdge", "sipstack.lua"),
    ("MediaPool", "sipstack.lua"),
    ("PgCluster", "sipstack.lua"),
];

/// What a script must return for a fixture.
enum Message {
    Exactly(&'static str),
    /// The message of the fixture's `Degraded` condition, word for word.
    OfDegraded,
}

use Message::{Exactly, OfDegraded};

/// Every fixture (tests/fixtures/argocd/NAME.yaml) with the health status and message
/// its kind's script must give.
#[rustfmt::skip]
const EXPECTED: &[(&str, &str, Message)] = &[
    ("sipedge-no-status", "Progressing", Exactly(WAITING)),
    ("sipedge-progressing", "Progressing", Exactly("0 of 2 pods ready")),
    ("sipedge-ready", "Healthy", Exactly("2 of 2 pods ready")),
    ("sipedge-stale", "Progressing", Exactly(STALE)),
    ("sipedge-degraded", "Degraded", OfDegraded),
    ("sipedge-degraded-stale", "Progressing", Exactly(STALE)),
    ("mediapool-no-status", "Progressing", Exactly(WAITING)),
    ("mediapool-progressing", "Progressing", Exactly("0 of 2 pods ready")),
    ("mediapool-ready", "Healthy", Exactly("2 of 2 pods ready")),
    ("mediapool-stale", "Progressing", Exactly(STALE)),
    ("mediapool-degraded", "Degraded", OfDegraded),
    ("pgcluster-no-status", "Progressing", Exactly(WAITING)),
    ("pgcluster-progressing", "Progressing", Exactly("0 of 1 pods ready")),
    ("pgcluster-ready", "Healthy", Exactly("1 of 1 pods ready")),
    ("pgcluster-stale", "Progressing", Exactly(STALE)),
    ("pgcluster-degraded", "Degraded", OfDegraded),
];

const WAITING: &str = "Waiting for the operator";

const STALE: &str = "Waiting for the operator to act on the latest spec";

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixtures_dir() -> PathBuf {
    manifest_dir().join("tests/fixtures/argocd")
}

fn argocd_dir() -> PathBuf {
    manifest_dir().join("../charts/sipstack/argocd")
}

fn kind_of(fixture: &str) -> &'static str {
    let prefix = fixture.split('-').next().unwrap_or_default();
    KINDS
        .iter()
        .map(|(kind, _)| *kind)
        .find(|kind| kind.to_lowercase() == prefix)
        .unwrap_or_else(|| panic!("{fixture}: no kind is named by its prefix"))
}

fn script_of(kind: &str) -> PathBuf {
    let file = KINDS.iter().find(|(k, _)| *k == kind).unwrap().1;
    argocd_dir().join("health").join(file)
}

fn updating() -> bool {
    std::env::var_os("SIPSTACK_UPDATE_GOLDEN").is_some()
}

/// Compares `text` with the file at `path`, or writes it with SIPSTACK_UPDATE_GOLDEN.
fn golden(path: &Path, text: &str) {
    if updating() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == text,
        "{} differs from what is made now; check the difference and run \
         SIPSTACK_UPDATE_GOLDEN=1 cargo test -p sipstack-operator --test argocd_health\n--- now:\n{text}",
        path.display()
    );
}

// ----- lua5.3 -----

/// `lua5.3` on PATH. Missing, the test is skipped with a reason, except in CI
/// (CI=true), where it fails.
fn lua(test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("lua5.3"))
            .find(|path| path.is_file())
    });
    if found.is_some() {
        return found;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "{test}: lua5.3 is required in CI (scripts/install-deps.sh installs Debian's lua5.3)"
        );
    }
    eprintln!("{test}: skipped: lua5.3 not found on PATH (apt-get install lua5.3)");
    None
}

/// Runs the health script (arg[1]) after a line `obj = {...}` that the test
/// prepends. Argo CD gives a resource.customizations script Lua's base and table
/// libraries only, so the script runs in an environment with just those, and
/// without string methods: a script that needs `string` or `math` fails here as it
/// would in Argo CD.
const HARNESS: &str = r#"
local path = arg[1]
local file = assert(io.open(path, "rb"))
local source = file:read("a")
file:close()

local env = { obj = obj, table = table, unpack = table.unpack }
for _, name in ipairs({ "assert", "error", "getmetatable", "ipairs", "next", "pairs",
    "pcall", "print", "rawequal", "rawget", "rawset", "select", "setmetatable",
    "tonumber", "tostring", "type", "xpcall" }) do
  env[name] = _G[name]
end
env._G = env
local chunk = assert(load(source, "@" .. path, "t", env))

local strings = getmetatable("")
local methods = strings.__index
strings.__index = nil
local ok, hs = pcall(chunk)
strings.__index = methods

if not ok then
  io.stderr:write(tostring(hs), "\n")
  os.exit(2)
end
if type(hs) ~= "table" then
  io.stderr:write("the script returned a ", type(hs), ", not a table\n")
  os.exit(3)
end
io.write(tostring(hs.status), "\n", tostring(hs.message))
"#;

/// `value` as a Lua expression, the way Argo CD hands the object to Lua: objects
/// and arrays become tables, null becomes nil, every number a float.
fn lua_literal(value: &Value) -> String {
    match value {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => format!("{:?}", n.as_f64().expect("a JSON number is finite")),
        Value::String(s) => lua_string(s),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(lua_literal).collect();
            format!("{{{}}}", items.join(", "))
        }
        Value::Object(fields) => {
            let fields: Vec<String> = fields
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("[{}] = {}", lua_string(k), lua_literal(v)))
                .collect();
            format!("{{{}}}", fields.join(", "))
        }
    }
}

fn lua_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            // three digits, so that a digit after it is not read as part of it
            c if c.is_ascii_control() => out.push_str(&format!("\\{:03}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `(status, message)` that `script` returns for `object`.
fn health(lua: &Path, script: &Path, object: &Value) -> (String, String) {
    let program = format!("obj = {}\n{HARNESS}", lua_literal(object));
    let mut child = Command::new(lua)
        .arg("-")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", lua.display()));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(program.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{} failed on {object:#}: {}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let (status, message) = stdout
        .split_once('\n')
        .unwrap_or_else(|| panic!("no status and message in {stdout:?}"));
    (status.to_string(), message.to_string())
}

// ----- the fixtures, as the controllers write them -----

struct Fixture {
    name: &'static str,
    /// What the object is, and the controller test whose scenario it follows.
    about: &'static str,
    object: Value,
}

/// The object as Argo CD would read it, reduced to what the health check looks at:
/// identity, generation and status, with fixed transition times.
fn reduced(object: &Value) -> Value {
    let meta = &object["metadata"];
    let mut status = object["status"].clone();
    if let Some(conditions) = status.get_mut("conditions").and_then(Value::as_array_mut) {
        for c in conditions {
            c["lastTransitionTime"] = json!("2026-01-01T00:00:00Z");
        }
    }
    let mut reduced = json!({
        "apiVersion": object["apiVersion"],
        "kind": object["kind"],
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "generation": meta["generation"],
        },
    });
    if !status.is_null() {
        reduced["status"] = status;
    }
    reduced
}

fn stored(fake: &FakeApi, kind: &str, name: &str) -> Value {
    fake.all(kind)
        .into_iter()
        .find(|o| o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name}"))
}

/// Makes every StatefulSet and Deployment report all its pods ready and updated, as
/// their controllers do once the pods run (see ready_pods_make_the_pool_ready).
fn all_pods_ready(fake: &FakeApi) {
    for kind in ["StatefulSet", "Deployment"] {
        for object in fake.all(kind) {
            let name = object["metadata"]["name"].as_str().unwrap().to_string();
            let replicas = object["spec"]["replicas"].as_i64().unwrap_or(1);
            let generation = object["metadata"]["generation"].as_i64().unwrap_or(1);
            fake.update(kind, NAMESPACE, &name, |o| {
                o["status"] = json!({
                    "replicas": replicas,
                    "readyReplicas": replicas,
                    "updatedReplicas": replicas,
                    "availableReplicas": replicas,
                    "observedGeneration": generation,
                });
            });
        }
    }
}

/// A change of the spec that the operator has not reconciled yet: the API server
/// raised the generation, the status still describes the previous one.
fn spec_changed(fake: &FakeApi, kind: &str, name: &str) {
    fake.update(kind, NAMESPACE, name, |o| {
        let generation = o["metadata"]["generation"].as_i64().unwrap_or(1);
        o["metadata"]["generation"] = json!(generation + 1);
    });
}

async fn reconcile(
    fake: &FakeApi,
    ctx: &Arc<controller::context::Context>,
    kind: &str,
    name: &str,
) {
    match kind {
        "SipEdge" => {
            let edge: SipEdge = fake.get(kind, NAMESPACE, name).unwrap();
            controller::sipedge::reconcile(Arc::new(edge), ctx.clone()).await
        }
        "MediaPool" => {
            let pool: MediaPool = fake.get(kind, NAMESPACE, name).unwrap();
            controller::mediapool::reconcile(Arc::new(pool), ctx.clone()).await
        }
        "PgCluster" => {
            let pg: PgCluster = fake.get(kind, NAMESPACE, name).unwrap();
            controller::pgcluster::reconcile(Arc::new(pg), ctx.clone()).await
        }
        other => panic!("no controller for {other}"),
    }
    .unwrap_or_else(|e| panic!("reconcile {kind}/{name}: {e}"));
}

/// no status, progressing, ready and stale of one kind: the example platform with
/// the resource's dependencies in place (the MediaPool with its finalizer, as in
/// controller.rs `insert_cluster_and_pool`).
async fn lifecycle(kind: &'static str, name: &str, fixtures: &mut Vec<Fixture>) {
    let (fake, ctx, _) = setup();
    let p = example();
    fake.insert(&p.pg_clusters[0]);
    if kind != "PgCluster" {
        let mut pool = p.media_pools[0].clone();
        pool.metadata.finalizers = Some(vec![DISPATCHER_FINALIZER.into()]);
        fake.insert(&pool);
    }
    if kind == "SipEdge" {
        fake.insert(&p.sip_edges[0]);
    }
    let [no_status, progressing, ready, stale] = match kind {
        "SipEdge" => [
            "sipedge-no-status",
            "sipedge-progressing",
            "sipedge-ready",
            "sipedge-stale",
        ],
        "MediaPool" => [
            "mediapool-no-status",
            "mediapool-progressing",
            "mediapool-ready",
            "mediapool-stale",
        ],
        _ => [
            "pgcluster-no-status",
            "pgcluster-progressing",
            "pgcluster-ready",
            "pgcluster-stale",
        ],
    };
    fixtures.push(Fixture {
        name: no_status,
        about: "created, not reconciled yet",
        object: reduced(&stored(&fake, kind, name)),
    });
    reconcile(&fake, &ctx, kind, name).await;
    fixtures.push(Fixture {
        name: progressing,
        about: "after the first reconcile, no pod ready yet \
                (controller.rs: first_reconcile_of_a_*_applies_its_objects_in_order)",
        object: reduced(&stored(&fake, kind, name)),
    });
    all_pods_ready(&fake);
    reconcile(&fake, &ctx, kind, name).await;
    fixtures.push(Fixture {
        name: ready,
        about: "every pod ready and updated (controller.rs: ready_pods_make_the_pool_ready)",
        object: reduced(&stored(&fake, kind, name)),
    });
    spec_changed(&fake, kind, name);
    fixtures.push(Fixture {
        name: stale,
        about: "ready, then the spec changed and the operator has not reconciled it yet \
                (metadata.generation ahead of status.observedGeneration)",
        object: reduced(&stored(&fake, kind, name)),
    });
}

/// Every fixture, made by the controllers.
async fn fixtures() -> Vec<Fixture> {
    let mut fixtures = Vec::new();
    lifecycle("SipEdge", "edge", &mut fixtures).await;
    lifecycle("MediaPool", "media", &mut fixtures).await;
    lifecycle("PgCluster", "pg", &mut fixtures).await;

    // controller.rs: a_sipedge_naming_a_missing_pgcluster_is_degraded_with_an_event
    let (fake, ctx, _) = setup();
    let p = example();
    fake.insert(&p.media_pools[0]);
    fake.insert(&p.sip_edges[0]);
    reconcile(&fake, &ctx, "SipEdge", "edge").await;
    fixtures.push(Fixture {
        name: "sipedge-degraded",
        about: "names a PgCluster that does not exist \
                (controller.rs: a_sipedge_naming_a_missing_pgcluster_is_degraded_with_an_event)",
        object: reduced(&stored(&fake, "SipEdge", "edge")),
    });
    spec_changed(&fake, "SipEdge", "edge");
    fixtures.push(Fixture {
        name: "sipedge-degraded-stale",
        about: "degraded, then the spec changed (a fix pushed) and the operator has not \
                reconciled it yet: the Degraded condition is about the previous spec",
        object: reduced(&stored(&fake, "SipEdge", "edge")),
    });

    // controller.rs: an_invalid_spec_is_degraded_naming_the_field
    let (fake, ctx, _) = setup();
    let mut pool = example().media_pools[0].clone();
    pool.spec.cdr.enabled = false;
    pool.spec.rtp.port_start = 40000;
    pool.spec.rtp.port_end = 30000;
    pool.metadata.finalizers = Some(vec![DISPATCHER_FINALIZER.into()]);
    fake.insert(&pool);
    reconcile(&fake, &ctx, "MediaPool", "media").await;
    fixtures.push(Fixture {
        name: "mediapool-degraded",
        about: "an RTP port range that ends before it starts \
                (controller.rs: an_invalid_spec_is_degraded_naming_the_field)",
        object: reduced(&stored(&fake, "MediaPool", "media")),
    });

    // controller.rs: an_immutable_statefulset_change_is_degraded_with_the_way_out
    let (fake, ctx, _) = setup();
    fake.insert(&example().pg_clusters[0]);
    reconcile(&fake, &ctx, "PgCluster", "pg").await;
    fake.update("PgCluster", NAMESPACE, "pg", |c| {
        c["spec"]["storage"]["size"] = json!("200Gi");
        c["metadata"]["generation"] = json!(2);
    });
    reconcile(&fake, &ctx, "PgCluster", "pg").await;
    fixtures.push(Fixture {
        name: "pgcluster-degraded",
        about: "a storage size change the StatefulSet cannot take in place \
                (controller.rs: an_immutable_statefulset_change_is_degraded_with_the_way_out)",
        object: reduced(&stored(&fake, "PgCluster", "pg")),
    });
    fixtures
}

fn fixture_text(fixture: &Fixture) -> String {
    format!(
        "# {}: {}.\n# Written by operator/tests/argocd_health.rs from what the controllers store;\n\
         # SIPSTACK_UPDATE_GOLDEN=1 cargo test -p sipstack-operator --test argocd_health rewrites it.\n{}",
        fixture.name,
        fixture.about,
        serde_yaml::to_string(&fixture.object).unwrap()
    )
}

fn read_fixture(name: &str) -> Value {
    let path = fixtures_dir().join(format!("{name}.yaml"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn condition<'a>(object: &'a Value, type_: &str) -> &'a Value {
    object["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {object:#}"))
}

// ----- the tests -----

#[tokio::test]
async fn the_fixtures_are_what_the_controllers_write() {
    let fixtures = fixtures().await;
    let mut made: Vec<&str> = fixtures.iter().map(|f| f.name).collect();
    let mut expected: Vec<&str> = EXPECTED.iter().map(|(name, _, _)| *name).collect();
    made.sort_unstable();
    expected.sort_unstable();
    assert_eq!(
        made, expected,
        "every fixture has an expected health, and only those"
    );
    for fixture in &fixtures {
        golden(
            &fixtures_dir().join(format!("{}.yaml", fixture.name)),
            &fixture_text(fixture),
        );
    }
    // the degraded fixtures carry the reasons of the controller tests they follow
    let reasons: Vec<(&str, &Value)> = fixtures
        .iter()
        .filter(|f| f.name.ends_with("-degraded"))
        .map(|f| (f.name, &condition(&f.object, "Degraded")["reason"]))
        .collect();
    assert_eq!(
        reasons,
        [
            ("sipedge-degraded", &json!("MissingReference")),
            ("mediapool-degraded", &json!("InvalidSpec")),
            ("pgcluster-degraded", &json!("ImmutableField")),
        ]
    );
}

#[test]
fn each_health_check_maps_the_fixtures() {
    let Some(lua) = lua("each_health_check_maps_the_fixtures") else {
        return;
    };
    for (name, status, message) in EXPECTED {
        let object = read_fixture(name);
        let kind = kind_of(name);
        assert_eq!(object["kind"], kind, "{name}");
        let want = match message {
            Exactly(text) => text.to_string(),
            OfDegraded => condition(&object, "Degraded")["message"]
                .as_str()
                .unwrap()
                .to_string(),
        };
        let got = health(&lua, &script_of(kind), &object);
        assert_eq!(got, (status.to_string(), want), "{name}");
    }
}

#[test]
fn a_status_without_conditions_or_messages_still_gets_a_health() {
    let Some(lua) = lua("a_status_without_conditions_or_messages_still_gets_a_health") else {
        return;
    };
    let object = |status: Value| {
        json!({
            "apiVersion": "sipstack.io/v1alpha1",
            "kind": "SipEdge",
            "metadata": {"name": "edge", "namespace": NAMESPACE, "generation": 3},
            "status": status,
        })
    };
    let script = script_of("SipEdge");
    let cases = [
        // written before the first reconcile finished: only kind-specific fields
        (json!({"readyReplicas": 0}), ("Progressing", WAITING)),
        (
            json!({"conditions": [], "observedGeneration": 3}),
            ("Progressing", WAITING),
        ),
        // conditions without observedGeneration are not known to be current
        (
            json!({"conditions": [{"type": "Ready", "status": "True", "reason": "AllReady", "message": "1 of 1 pods ready"}]}),
            ("Progressing", STALE),
        ),
        // no message: the reason stands in
        (
            json!({"observedGeneration": 3, "conditions": [{"type": "Degraded", "status": "True", "reason": "InvalidSpec", "message": ""}]}),
            ("Degraded", "InvalidSpec"),
        ),
        (
            json!({"observedGeneration": 3, "conditions": [{"type": "Degraded", "status": "False", "reason": "AsExpected", "message": "the spec is applied"}]}),
            ("Progressing", WAITING),
        ),
    ];
    for (status, (health_status, message)) in cases {
        let got = health(&lua, &script, &object(status.clone()));
        assert_eq!(
            got,
            (health_status.to_string(), message.to_string()),
            "{status:#}"
        );
    }
}

#[test]
fn the_harness_refuses_what_argo_cd_does_not_load() {
    let Some(lua) = lua("the_harness_refuses_what_argo_cd_does_not_load") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("sipstack-argocd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, source) in [
        (
            "string-library",
            "return {status = string.lower(\"Healthy\")}",
        ),
        ("string-method", "return {status = (\"Healthy\"):lower()}"),
        (
            "math-library",
            "return {status = \"Healthy\", message = math.floor(1.5)}",
        ),
    ] {
        let path = dir.join(format!("{name}.lua"));
        std::fs::write(&path, source).unwrap();
        let output = Command::new(&lua)
            .arg("-")
            .arg(&path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(format!("obj = {{}}\n{HARNESS}").as_bytes())?;
                child.wait_with_output()
            })
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{name}: {output:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

// ----- the argocd-cm snippets carry the scripts -----

/// The scripts as `resource.customizations.health.sipstack.io_<Kind>` entries,
/// indented by `indent` spaces.
fn entries(indent: usize) -> String {
    let pad = " ".repeat(indent);
    let mut out = String::new();
    for (kind, _) in KINDS {
        let script = std::fs::read_to_string(script_of(kind)).unwrap();
        assert!(
            script.ends_with('\n') && !script.ends_with("\n\n"),
            "{kind}: the script ends with exactly one newline, as a YAML `|` block keeps it"
        );
        out.push_str(&format!(
            "{pad}resource.customizations.health.sipstack.io_{kind}: |\n"
        ));
        for line in script.lines() {
            if line.is_empty() {
                out.push('\n');
            } else {
                out.push_str(&format!("{pad}  {line}\n"));
            }
        }
    }
    out
}

const SNIPPET_HEADER: &str = "# Copies of health/sipstack.lua, written by operator/tests/argocd_health.rs\n\
# (SIPSTACK_UPDATE_GOLDEN=1 cargo test -p sipstack-operator --test argocd_health).\n\
# Edit the scripts, not this file. Installing: charts/sipstack/README.md, \"Argo CD health checks\".\n";

fn argocd_cm_patch() -> String {
    format!(
        "# The sipstack health checks as a patch of Argo CD's argocd-cm ConfigMap:\n\
         #   kubectl -n argocd patch configmap argocd-cm --type merge \\\n\
         #     --patch-file charts/sipstack/argocd/argocd-cm-patch.yaml\n\
         {SNIPPET_HEADER}apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: argocd-cm\ndata:\n{}",
        entries(2)
    )
}

fn argo_cd_values() -> String {
    format!(
        "# The sipstack health checks as values of the argo-cd Helm chart\n\
         # (https://argoproj.github.io/argo-helm), which writes argocd-cm from configs.cm:\n\
         #   helm upgrade argocd argo/argo-cd -n argocd --reuse-values \\\n\
         #     -f charts/sipstack/argocd/argo-cd-values.yaml\n\
         {SNIPPET_HEADER}configs:\n  cm:\n{}",
        entries(4)
    )
}

#[test]
fn the_argocd_cm_snippets_carry_the_scripts() {
    let patch = argocd_cm_patch();
    let values = argo_cd_values();
    golden(&argocd_dir().join("argocd-cm-patch.yaml"), &patch);
    golden(&argocd_dir().join("argo-cd-values.yaml"), &values);
    let patch: Value = serde_yaml::from_str(&patch).unwrap();
    let values: Value = serde_yaml::from_str(&values).unwrap();
    assert_eq!(patch["metadata"]["name"], "argocd-cm");
    for (kind, _) in KINDS {
        let key = format!("resource.customizations.health.sipstack.io_{kind}");
        let script = std::fs::read_to_string(script_of(kind)).unwrap();
        assert_eq!(patch["data"][&key].as_str(), Some(script.as_str()), "{key}");
        assert_eq!(
            values["configs"]["cm"][&key].as_str(),
            Some(script.as_str()),
            "{key}"
        );
    }
}
