//! The Helm chart against the operator: its RBAC grants every kind of child the
//! controllers apply, and the operator's pods carry the labels the operator's
//! NetworkPolicies admit them by.

use std::path::PathBuf;

use k8s_openapi::api::rbac::v1::PolicyRule;
use sipstack_operator::controller::{mediapool, pgcluster, sipedge};
use sipstack_operator::meta::{OPERATOR_APP, OPERATOR_COMPONENT};

fn chart_file(relative: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../charts/sipstack")
        .join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The body of the template `{{- define "NAME" -}}` … `{{- end -}}` of `text`: up to
/// the last `end` before the next `define` (the body may hold `if … end` of its own).
fn define<'a>(text: &'a str, name: &str) -> &'a str {
    let start = format!("{{{{- define \"{name}\" -}}}}");
    let rest = text
        .split_once(&start)
        .unwrap_or_else(|| panic!("no define {name:?}"))
        .1;
    let rest = rest
        .split_once("{{- define ")
        .map_or(rest, |(body, _)| body);
    rest.rsplit_once("{{- end -}}")
        .unwrap_or_else(|| panic!("define {name:?} has no end"))
        .0
}

/// Verbs the chart grants on `resource` of `group`.
fn granted(rules: &[PolicyRule], group: &str, resource: &str) -> Vec<String> {
    rules
        .iter()
        .filter(|r| r.api_groups.iter().flatten().any(|g| g == group))
        .filter(|r| r.resources.iter().flatten().any(|res| res == resource))
        .flat_map(|r| r.verbs.clone())
        .collect()
}

#[test]
fn the_chart_grants_every_child_kind_of_the_controllers() {
    let template = chart_file("templates/_rbac.tpl");
    let rules: Vec<PolicyRule> = serde_yaml::from_str(define(&template, "sipstack.operatorRules"))
        .expect("the operator's rules are a YAML list of PolicyRules");
    let kinds = [
        sipedge::CHILD_KINDS,
        mediapool::CHILD_KINDS,
        pgcluster::CHILD_KINDS,
    ]
    .concat();
    assert!(kinds.contains(&sipstack_operator::controller::apply::ChildKind::NetworkPolicy));
    // list and watch (the controllers' `owns`), get, server-side apply (patch, and
    // create for a missing object), delete of a child no longer wanted: controller/apply.rs
    for kind in kinds {
        let (group, resource) = kind.api_resource();
        let verbs = granted(&rules, group, resource);
        for verb in ["get", "list", "watch", "create", "patch", "delete"] {
            assert!(
                verbs.iter().any(|v| v == verb),
                "templates/_rbac.tpl does not grant {verb} on {resource} ({group:?}) for ChildKind::{kind:?}"
            );
        }
    }
    assert_eq!(
        granted(&rules, "networking.k8s.io", "networkpolicies"),
        ["get", "list", "watch", "create", "patch", "delete"]
    );
}

#[test]
fn the_operators_pods_carry_the_labels_its_network_policies_admit() {
    let helpers = chart_file("templates/_helpers.tpl");
    let selector = define(&helpers, "sipstack.selectorLabels");
    let has_line = |line: String| selector.lines().any(|l| l.trim() == line);
    assert!(
        has_line(format!("app.kubernetes.io/component: {OPERATOR_COMPONENT}")),
        "{selector}"
    );
    // app.kubernetes.io/name is the chart's name (nameOverride is refused)
    assert!(
        has_line("app.kubernetes.io/name: {{ include \"sipstack.name\" . }}".into()),
        "{selector}"
    );
    assert!(
        define(&helpers, "sipstack.name").contains("default .Chart.Name .Values.nameOverride"),
        "{helpers}"
    );
    let chart = chart_file("Chart.yaml");
    assert!(
        chart.lines().any(|l| l == format!("name: {OPERATOR_APP}")),
        "Chart.yaml does not name the chart {OPERATOR_APP:?}"
    );
    let validate = define(&helpers, "sipstack.validate");
    assert!(validate.contains(".Values.nameOverride"), "{validate}");
    // the comment of the selector labels names the constants, so a change of either
    // side is seen from the other
    for constant in ["OPERATOR_APP", "OPERATOR_COMPONENT", "operator/src/meta.rs"] {
        assert!(
            helpers.contains(constant),
            "_helpers.tpl does not mention {constant}"
        );
    }
    // the pods get the selector labels
    let deployment = chart_file("templates/deployment.yaml");
    let template = deployment
        .split_once("  template:\n    metadata:\n      labels:\n")
        .expect("the Deployment's pod template has labels")
        .1;
    assert!(
        template
            .lines()
            .next()
            .is_some_and(|l| l.contains("include \"sipstack.selectorLabels\"")),
        "{template}"
    );
}
