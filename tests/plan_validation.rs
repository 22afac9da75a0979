//! Plan loading and validation as a plan author meets them: every loading error and every
//! validation rule has a realistic bad plan under `tests/data/plans/invalid/` (one thing wrong in
//! each), and every plan under `tests/data/plans/valid/` loads and validates cleanly.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use recoverd::plan::{self, LoadError, LoadedPlan, Problem};

/// The cluster registry the fixtures are written against.
fn clusters() -> BTreeSet<String> {
    ["north", "south", "edge"].map(String::from).into()
}

fn plans_dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/plans")
        .join(kind)
}

fn yaml_files(kind: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(plans_dir(kind))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {kind}/");
    files
}

fn load(kind: &str, file: &str) -> (Vec<LoadedPlan>, Vec<LoadError>) {
    let path = plans_dir(kind).join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    plan::load_str(&path, &text)
}

/// The one plan in a file that must load.
fn load_one(kind: &str, file: &str) -> LoadedPlan {
    let (mut plans, errors) = load(kind, file);
    assert!(errors.is_empty(), "{file} should load: {errors:#?}");
    assert_eq!(plans.len(), 1, "{file} should hold one plan");
    plans.remove(0)
}

/// The problems of the one plan in `invalid/<file>`, validated against north, south and edge.
fn problems(file: &str) -> Vec<Problem> {
    let loaded = load_one("invalid", file);
    plan::validate(&loaded.plan.spec, Some(&clusters())).problems
}

/// Asserts that `invalid/<file>` loads and has exactly one problem, of this rule, about this
/// step and field, whose message has all of `words`; returns it.
fn the_problem(file: &str, rule: &str, step: Option<&str>, field: &str, words: &[&str]) -> Problem {
    let found = problems(file);
    assert_eq!(found.len(), 1, "{file}: expected one problem: {found:#?}");
    let p = found.into_iter().next().unwrap();
    assert_problem(&p, rule, step, field, words);
    p
}

fn assert_problem(p: &Problem, rule: &str, step: Option<&str>, field: &str, words: &[&str]) {
    assert_eq!(p.rule, rule, "{p:#?}");
    assert_eq!(p.step.as_deref(), step, "{p:#?}");
    assert_eq!(p.field, field, "{p:#?}");
    assert_mentions(&p.message, words);
}

/// Asserts that `invalid/<file>` fails to load with exactly one error, at this line and column
/// of the file, whose message has all of `words`; returns it.
fn the_load_error(file: &str, line: usize, column: usize, words: &[&str]) -> LoadError {
    let (plans, errors) = load("invalid", file);
    assert!(plans.is_empty(), "{file} should not load");
    assert_eq!(errors.len(), 1, "{file}: expected one error: {errors:#?}");
    let e = errors.into_iter().next().unwrap();
    assert_eq!((e.line, e.column), (line, column), "{e}");
    assert_mentions(&e.message, words);
    assert!(
        e.to_string()
            .starts_with(&format!("{}:{line}:{column}: ", e.file.display())),
        "{e}"
    );
    assert!(e.file.ends_with(file), "{e}");
    e
}

fn assert_mentions(message: &str, words: &[&str]) {
    for w in words {
        assert!(message.contains(w), "{message:?} should mention {w:?}");
    }
}

// ---- Every fixture counts ----

#[test]
fn every_valid_plan_loads_and_validates_without_problems() {
    for path in yaml_files("valid") {
        let file = path.file_name().unwrap().to_str().unwrap();
        let loaded = load_one("valid", file);
        let report = plan::validate(&loaded.plan.spec, Some(&clusters()));
        assert!(report.problems.is_empty(), "{file}: {:#?}", report.problems);
    }
}

#[test]
fn every_invalid_plan_fails_to_load_or_to_validate() {
    for path in yaml_files("invalid") {
        let file = path.file_name().unwrap().to_str().unwrap();
        let (plans, errors) = load("invalid", file);
        let problems: usize = plans
            .iter()
            .map(|p| plan::validate(&p.plan.spec, Some(&clusters())).problems.len())
            .sum();
        assert!(
            !errors.is_empty() || problems > 0,
            "{file} loads and validates cleanly, but it is a fixture of an invalid plan"
        );
    }
}

#[test]
fn every_invalid_plan_has_a_test_of_its_own() {
    let tests = include_str!("plan_validation.rs");
    for path in yaml_files("invalid") {
        let file = path.file_name().unwrap().to_str().unwrap();
        assert!(
            tests.contains(&format!("\"{file}\"")),
            "{file} has no test asserting what is wrong with it"
        );
    }
}

/// Every rule (the enum lists them all, so a new rule cannot be missed) has a fixture, and each
/// fixture, loaded through the public loader, is refused with a typed error.
#[test]
fn every_validation_rule_has_an_invalid_plan() {
    let mut seen = BTreeSet::new();
    for path in yaml_files("invalid") {
        let file = path.file_name().unwrap().to_str().unwrap();
        let (plans, load_errors) = load("invalid", file);
        let mut refused = !load_errors.is_empty();
        for p in plans {
            if let Err(invalid) = plan::compile_one(&p, Some(&clusters())) {
                assert!(!invalid.problems.is_empty(), "{file}");
                seen.extend(invalid.problems.iter().map(|problem| problem.rule));
                refused = true;
            }
        }
        assert!(refused, "{file}: nothing in it is refused");
    }
    let missing: Vec<_> = plan::Rule::ALL.iter().filter(|r| !seen.contains(*r)).collect();
    assert!(missing.is_empty(), "rules without a fixture: {missing:?}");
}

// ---- Valid plans ----

#[test]
fn a_merge_patch_through_an_array_index_is_accepted_with_a_note_that_it_goes_as_a_json_patch() {
    let loaded = load_one("valid", "haproxy-image-pin.yaml");
    let report = plan::validate(&loaded.plan.spec, Some(&clusters()));
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
    assert_eq!(report.notes.len(), 1, "{:#?}", report.notes);
    let note = &report.notes[0];
    assert_eq!(note.step, "pin-image");
    assert_mentions(
        &note.message,
        &["spec.template.spec.containers[0].image", "array index", "JSON Patch"],
    );
}

#[test]
fn a_plan_without_array_indexes_in_its_patches_gets_no_notes() {
    let loaded = load_one("valid", "cnpg-switchover.yaml");
    let report = plan::validate(&loaded.plan.spec, Some(&clusters()));
    assert!(report.notes.is_empty(), "{:#?}", report.notes);
}

#[test]
fn a_nova_plan_loads_unchanged_with_steps_named_by_position_on_the_default_cluster() {
    let loaded = load_one("valid", "nova-ferretdb-percona.yaml");
    assert!(loaded.nova);
    let steps = &loaded.plan.spec.steps;
    let names: Vec<_> = steps.iter().map(|s| s.name()).collect();
    assert_eq!(names, ["step-1", "step-2", "step-3", "step-4"]);
    assert!(steps.iter().all(|s| s.cluster.is_none()));
    let report = plan::validate(&loaded.plan.spec, Some(&clusters()));
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
}

// ---- Loading errors: file, line, column and what is wrong ----

#[test]
fn a_yaml_syntax_error_points_where_the_parser_gave_up_and_where_the_unclosed_mapping_began() {
    the_load_error(
        "yaml-syntax.yaml",
        17,
        3,
        &["did not find expected ',' or '}'", "flow mapping at line 16 column 17"],
    );
}

#[test]
fn positions_in_a_later_document_count_from_the_top_of_the_file_and_the_others_still_load() {
    let (plans, errors) = load("invalid", "yaml-syntax-in-second-document.yaml");
    let names: Vec<_> = plans.iter().map(|p| p.plan.metadata.name.clone().unwrap()).collect();
    assert_eq!(names, ["pg-demote-north", "pg-haproxy-south"]);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let e = &errors[0];
    assert_eq!((e.line, e.column), (36, 3), "{e}");
    assert_mentions(
        &e.message,
        &["expected ',' or '}'", "flow mapping at line 35 column 17"],
    );
    for p in &plans {
        let report = plan::validate(&p.plan.spec, Some(&clusters()));
        assert!(report.problems.is_empty(), "{:#?}", report.problems);
    }
}

#[test]
fn an_unknown_step_type_is_named_with_the_types_there_are() {
    the_load_error(
        "unknown-step-type.yaml",
        18,
        11,
        &[
            "spec.steps[1].type",
            "unknown variant `read-field`",
            "`patch`, `readField`, `wait`, `apply`, `http`",
            "unknown step type",
        ],
    );
}

#[test]
fn a_key_indented_at_the_wrong_level_is_named_with_the_keys_allowed_there() {
    the_load_error(
        "misindented-key.yaml",
        17,
        5,
        &[
            "spec.steps[0]",
            "unknown field `patchType`",
            "`patch`",
            "indented under the right key",
        ],
    );
}

#[test]
fn a_required_key_indented_outside_its_section_is_missing_with_a_pointer_to_where_it_is() {
    the_load_error(
        "misindented-output-key.yaml",
        21,
        7,
        &[
            "spec.steps[1].readField",
            "missing field `outputKey`",
            "the `outputKey:` at line 26 column 5 is outside `readField`",
            "indented under the right key",
        ],
    );
}

#[test]
fn a_read_without_an_output_key_names_the_missing_field() {
    let e = the_load_error(
        "missing-output-key.yaml",
        21,
        7,
        &["spec.steps[1].readField", "missing field `outputKey`"],
    );
    assert!(!e.message.contains("indented"), "{e}");
}

#[test]
fn a_value_of_the_wrong_type_names_the_field_and_the_type_it_needs() {
    the_load_error(
        "wrong-value-type.yaml",
        11,
        14,
        &["spec.steps[0].retries", "\"three\"", "expected u32"],
    );
}

#[test]
fn an_unknown_mode_lists_the_modes_there_are() {
    let e = the_load_error(
        "unknown-mode.yaml",
        7,
        9,
        &[
            "spec.mode",
            "unknown variant `automatic`",
            "`auto`, `approval`, `manual`",
        ],
    );
    assert!(!e.message.contains("step type"), "{e}");
}

#[test]
fn a_wrong_api_version_points_at_the_api_version_line() {
    the_load_error(
        "wrong-api-version.yaml",
        2,
        13,
        &[
            "expected apiVersion recoverd.io/v1alpha1",
            "recovery.elotl.co/v1alpha1",
            "found \"recoverd.io/v1\"",
        ],
    );
}

#[test]
fn a_document_of_another_kind_is_not_taken_for_a_plan() {
    the_load_error(
        "wrong-kind.yaml",
        3,
        7,
        &["expected kind RecoveryPlan", "found \"RecoveryRun\""],
    );
}

#[test]
fn a_plan_without_a_name_points_at_its_metadata() {
    the_load_error("missing-plan-name.yaml", 4, 1, &["metadata.name is missing"]);
}

// ---- The plan as a whole ----

#[test]
fn a_plan_without_steps_is_refused() {
    the_problem("no-steps.yaml", "no-steps", None, "spec.steps", &["no steps"]);
}

#[test]
fn a_malformed_cooldown_says_how_to_write_a_duration() {
    the_problem(
        "bad-duration.yaml",
        "duration",
        None,
        "spec.cooldown",
        &["\"30 minutes\"", "unknown unit", "5m"],
    );
}

#[test]
fn a_malformed_alert_matcher_is_named_by_its_position() {
    the_problem(
        "bad-matcher.yaml",
        "matcher",
        None,
        "spec.alertMatchers[0]",
        &["severity=~", "closing quote is missing"],
    );
}

// ---- Step names, types and clusters ----

#[test]
fn a_step_name_used_twice_names_both_places() {
    the_problem(
        "duplicate-step.yaml",
        "duplicate-step",
        Some("read-token"),
        "spec.steps[4].name",
        &["\"read-token\"", "used twice", "first at spec.steps[2]"],
    );
}

#[test]
fn a_step_without_a_name_is_refused_outside_nova_plans() {
    the_problem(
        "missing-step-name.yaml",
        "step-name",
        None,
        "spec.steps[1].name",
        &["needs a `name`", "Nova"],
    );
}

#[test]
fn a_step_on_a_cluster_missing_from_the_registry_lists_the_known_clusters() {
    the_problem(
        "unknown-cluster.yaml",
        "unknown-cluster",
        Some("promote-west"),
        "spec.steps[3].cluster",
        &["\"west\"", "cluster registry", "edge, north, south"],
    );
}

#[test]
fn without_a_cluster_registry_cluster_names_are_not_checked() {
    let loaded = load_one("invalid", "unknown-cluster.yaml");
    let report = plan::validate(&loaded.plan.spec, None);
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
}

#[test]
fn a_step_typed_read_field_with_a_patch_section_suggests_the_type_it_meant() {
    let found = problems("wrong-body-for-type.yaml");
    assert_eq!(found.len(), 2, "{found:#?}");
    assert_problem(
        &found[0],
        "missing-body",
        Some("demote-north"),
        "spec.steps[0].readField",
        &["readField step needs a `readField:` section"],
    );
    assert_problem(
        &found[1],
        "extra-body",
        Some("demote-north"),
        "spec.steps[0].patch",
        &["cannot have a `patch:` section", "did you mean type: patch?"],
    );
}

#[test]
fn a_step_without_its_section_names_the_section_it_needs() {
    the_problem(
        "missing-body.yaml",
        "missing-body",
        Some("settle"),
        "spec.steps[1].wait",
        &["wait step needs a `wait:` section"],
    );
}

#[test]
fn a_step_with_a_second_section_is_refused() {
    the_problem(
        "extra-body.yaml",
        "extra-body",
        Some("demote-north"),
        "spec.steps[0].wait",
        &["patch step cannot have a `wait:` section"],
    );
}

// ---- Durations and bounds ----

#[test]
fn a_step_timeout_without_a_unit_is_refused() {
    the_problem(
        "bad-step-timeout.yaml",
        "duration",
        Some("promote-south"),
        "spec.steps[0].timeout",
        &["\"30\"", "unit is missing"],
    );
}

#[test]
fn a_wait_timeout_in_a_unit_that_does_not_exist_is_refused() {
    the_problem(
        "bad-wait-timeout.yaml",
        "duration",
        Some("wait-south-ready"),
        "spec.steps[1].wait.timeout",
        &["\"5min\"", "unknown unit \"min\""],
    );
}

#[test]
fn a_condition_wait_without_a_timeout_is_unbounded() {
    the_problem(
        "unbounded-wait.yaml",
        "unbounded",
        Some("wait-token"),
        "spec.steps[1].wait.timeout",
        &["condition wait needs a `timeout`", "bounded"],
    );
}

#[test]
fn a_step_timeout_longer_than_the_plan_timeout_is_refused() {
    the_problem(
        "step-timeout-exceeds-plan.yaml",
        "unbounded",
        Some("haproxy"),
        "spec.steps[1].timeout",
        &["step timeout 30m", "plan's timeout 10m"],
    );
}

#[test]
fn a_pause_longer_than_the_plan_timeout_is_refused() {
    the_problem(
        "wait-longer-than-plan.yaml",
        "unbounded",
        Some("let-wal-drain"),
        "spec.steps[1].wait.duration",
        &["wait of 45m", "plan's timeout 20m"],
    );
}

#[test]
fn a_wait_timeout_longer_than_the_default_plan_timeout_is_refused() {
    the_problem(
        "wait-timeout-exceeds-plan.yaml",
        "unbounded",
        Some("wait-south-ready"),
        "spec.steps[1].wait.timeout",
        &["wait timeout 2h", "plan's timeout 1h"],
    );
}

// ---- Waits ----

#[test]
fn a_wait_with_both_a_duration_and_a_condition_is_refused() {
    the_problem(
        "wait-both-duration-and-condition.yaml",
        "wait-form",
        Some("wait-token"),
        "spec.steps[1].wait",
        &["either `duration`", "not both"],
    );
}

#[test]
fn a_wait_with_neither_a_duration_nor_a_condition_is_refused() {
    the_problem(
        "wait-without-duration-or-condition.yaml",
        "wait-form",
        Some("settle"),
        "spec.steps[1].wait",
        &["needs `duration`", "`fieldPath` and `condition`"],
    );
}

#[test]
fn a_condition_wait_must_name_its_object() {
    the_problem(
        "wait-condition-without-object.yaml",
        "wait-form",
        Some("wait-token"),
        "spec.steps[1].wait.name",
        &["condition wait needs `name`"],
    );
}

#[test]
fn a_wait_on_a_field_needs_a_condition() {
    the_problem(
        "wait-without-condition.yaml",
        "wait-form",
        Some("wait-token"),
        "spec.steps[1].wait.condition",
        &["needs `condition`", "notEmpty"],
    );
}

#[test]
fn a_condition_has_exactly_one_test() {
    the_problem(
        "wait-two-conditions.yaml",
        "wait-form",
        Some("wait-token"),
        "spec.steps[1].wait.condition",
        &["exactly one of equals, notEquals, notEmpty, exists, changed"],
    );
}

// ---- Objects and field paths ----

#[test]
fn a_malformed_patch_field_path_says_what_is_wrong_with_it() {
    the_problem(
        "bad-field-path.yaml",
        "field-path",
        Some("demote-north"),
        "spec.steps[0].patch.override.fieldPath",
        &["`spec.replica..primary`", "empty key"],
    );
}

#[test]
fn a_wait_field_path_with_an_unclosed_bracket_is_refused() {
    the_problem(
        "bad-wait-field-path.yaml",
        "field-path",
        Some("wait-south-lb"),
        "spec.steps[1].wait.fieldPath",
        &["ingress[0.ip", "never closed"],
    );
}

#[test]
fn a_jsonpath_that_does_not_parse_is_refused_in_a_read() {
    the_problem(
        "bad-read-field-path.yaml",
        "field-path",
        Some("read-ready"),
        "spec.steps[0].readField.fieldPath",
        &["$.status.conditions[?(@.type=='Ready)].status"],
    );
}

#[test]
fn a_patch_cannot_write_through_a_jsonpath() {
    the_problem(
        "jsonpath-in-patch.yaml",
        "field-path",
        Some("demote-north"),
        "spec.steps[0].patch.override.fieldPath",
        &["dotted path", "not a JSONPath"],
    );
}

#[test]
fn an_unknown_patch_type_lists_the_three_there_are() {
    the_problem(
        "bad-patch-type.yaml",
        "patch-type",
        Some("demote-north"),
        "spec.steps[0].patch.patchType",
        &[
            "\"merge\"",
            "application/merge-patch+json",
            "application/json-patch+json",
            "application/strategic-merge-patch+json",
        ],
    );
}

#[test]
fn an_api_version_with_the_kind_appended_is_refused() {
    the_problem(
        "bad-api-version.yaml",
        "object",
        Some("demote-north"),
        "spec.steps[0].patch.apiVersion",
        &["\"postgresql.cnpg.io/v1/Cluster\"", "group/version"],
    );
}

#[test]
fn a_kind_given_as_the_resource_asks_for_the_plural() {
    the_problem(
        "bad-resource.yaml",
        "object",
        Some("read-south-host"),
        "spec.steps[0].readField.resource",
        &["\"PerconaPGCluster\"", "lower-case plural"],
    );
}

#[test]
fn a_read_output_key_that_is_not_a_name_is_refused() {
    the_problem(
        "bad-output-key.yaml",
        "output-key",
        Some("read-token"),
        "spec.steps[1].readField.outputKey",
        &["\"demotion-token\"", "letters, digits, _"],
    );
}

#[test]
fn an_http_output_key_that_is_not_a_name_is_refused() {
    the_problem(
        "bad-http-output-key.yaml",
        "output-key",
        Some("ask-dns"),
        "spec.steps[0].http.outputKey",
        &["\"dns.record\"", "letters, digits, _"],
    );
}

// ---- Templates and values ----

#[test]
fn an_unclosed_template_is_a_syntax_error_naming_the_raw_field() {
    the_problem(
        "template-syntax.yaml",
        "template",
        Some("promote-south"),
        "spec.steps[1].patch.override.value.raw.promotionToken",
        &[
            "failed to parse template",
            "{{ Values.DemotionToken }",
            "expected end of variable block",
        ],
    );
}

#[test]
fn a_misspelt_template_name_lists_the_names_there_are() {
    the_problem(
        "undefined-template-name.yaml",
        "template-name",
        Some("notify"),
        "spec.steps[1].http.body",
        &["`alerts` is not defined", "Values, alert, plan, run, secrets"],
    );
}

#[test]
fn a_value_used_before_the_step_that_produces_it_names_both_steps() {
    the_problem(
        "value-used-before-produced.yaml",
        "undefined-value",
        Some("promote-south"),
        "spec.steps[1].patch.override.value.raw.promotionToken",
        &[
            "`Values.DemotionToken` is used before it exists",
            "step \"read-token\" produces it",
            "must come before",
        ],
    );
}

#[test]
fn a_value_nothing_produces_is_refused() {
    the_problem(
        "value-never-produced.yaml",
        "undefined-value",
        Some("haproxy"),
        "spec.steps[1].apply.manifest",
        &["`Values.SouthIP`", "neither a param nor the outputKey"],
    );
}

#[test]
fn a_value_only_compensation_produces_cannot_be_used_by_the_main_steps() {
    the_problem(
        "value-produced-only-on-failure.yaml",
        "undefined-value",
        Some("notify"),
        "spec.steps[1].http.json.text",
        &[
            "`Values.IncidentUrl` is used before it exists",
            "only the onFailure step \"open-incident\" produces it",
            "after a step has failed",
        ],
    );
}

#[test]
fn a_misspelt_param_in_a_wait_condition_is_refused() {
    the_problem(
        "value-never-produced-in-wait-condition.yaml",
        "undefined-value",
        Some("wait-south-primary"),
        "spec.steps[1].wait.condition.equals",
        &["`Values.newPrimary`", "neither a param nor the outputKey"],
    );
}

#[test]
fn an_undefined_value_in_a_read_namespace_is_refused() {
    the_problem(
        "value-never-produced-in-read-namespace.yaml",
        "undefined-value",
        Some("read-south-host"),
        "spec.steps[0].readField.namespace",
        &["`Values.pgNamespace`", "neither a param nor the outputKey"],
    );
}

#[test]
fn a_secret_the_step_does_not_declare_is_refused() {
    the_problem(
        "undeclared-secret.yaml",
        "undefined-value",
        Some("notify"),
        "spec.steps[1].http.headers.Authorization",
        &["`secrets.slackToken`", "not declared", "http.secrets"],
    );
}

// ---- Apply ----

#[test]
fn an_apply_step_with_nothing_to_apply_is_refused() {
    the_problem(
        "apply-without-manifest.yaml",
        "apply-form",
        Some("haproxy"),
        "spec.steps[1].apply",
        &["either `manifest`", "`target` with `templateFrom`"],
    );
}

#[test]
fn an_apply_step_with_a_manifest_and_a_target_is_refused() {
    the_problem(
        "apply-manifest-and-target.yaml",
        "apply-form",
        Some("haproxy"),
        "spec.steps[0].apply",
        &["either `manifest`", "`target` with `templateFrom`"],
    );
}

#[test]
fn a_target_without_a_template_is_refused() {
    the_problem(
        "apply-target-without-template.yaml",
        "apply-form",
        Some("haproxy"),
        "spec.steps[0].apply",
        &["`target` and `templateFrom` go together"],
    );
}

#[test]
fn only_a_config_map_or_secret_key_can_be_a_target() {
    the_problem(
        "apply-target-bad-kind.yaml",
        "apply-form",
        Some("haproxy"),
        "spec.steps[0].apply.target.kind",
        &["ConfigMap or Secret", "\"Deployment\""],
    );
}

#[test]
fn a_template_from_two_sources_is_refused() {
    the_problem(
        "apply-template-from-two-sources.yaml",
        "apply-form",
        Some("haproxy"),
        "spec.steps[0].apply.templateFrom",
        &["exactly one of configMap, file, inline"],
    );
}

#[test]
fn a_template_file_outside_the_plan_directory_is_refused() {
    the_problem(
        "apply-template-file-outside.yaml",
        "apply-form",
        Some("haproxy"),
        "spec.steps[0].apply.templateFrom.file",
        &["../../../../etc/shadow", "inside the plan's directory"],
    );
}

// ---- HTTP ----

#[test]
fn an_unknown_template_filter_is_refused_at_load() {
    the_problem(
        "unknown-filter.yaml",
        "template",
        Some("annotate"),
        "spec.steps[0].patch.override.value.raw",
        &["shout"],
    );
}

#[test]
fn an_exec_step_needs_a_command() {
    the_problem(
        "exec-without-command.yaml",
        "exec-form",
        Some("is-primary"),
        "spec.steps[0].exec.command",
        &["needs a `command`"],
    );
}

#[test]
fn an_approval_step_cannot_be_tolerated_when_it_fails() {
    the_problem(
        "approval-that-may-fail.yaml",
        "approval-form",
        Some("decide"),
        "spec.steps[0].onError",
        &["cannot have `onError: continue`", "onTimeout"],
    );
}

#[test]
fn a_delete_names_one_object_or_a_selector_not_both() {
    the_problem(
        "delete-name-and-selector.yaml",
        "delete-form",
        Some("delete-pvc"),
        "spec.steps[0].delete",
        &["`name`", "`labelSelector`", "not both"],
    );
}

#[test]
fn a_condition_with_two_operators_or_a_number_that_is_not_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cond.yaml");
    std::fs::write(
        &path,
        "apiVersion: recoverd.io/v1alpha1\nkind: RecoveryPlan\nmetadata: {name: c}\nspec:\n  steps:\n  - name: w\n    type: wait\n    wait:\n      apiVersion: v1\n      resource: configmaps\n      name: x\n      timeout: 10s\n      condition:\n        allOf:\n        - {fieldPath: data.a, equals: x, notEquals: y}\n        - {fieldPath: data.b, atLeast: lots}\n        - {gone: true}\n        - {exists: true}\n",
    )
    .unwrap();
    let (plans, errors) = plan::load_paths(std::slice::from_ref(&path));
    assert!(errors.is_empty(), "{errors:?}");
    let problems = plan::validate(&plans[0].plan.spec, None).problems;
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.steps[0].wait.condition.allOf[0]",
            "spec.steps[0].wait.condition.allOf[1].atLeast",
            "spec.steps[0].wait.condition.allOf[3].fieldPath",
        ],
        "{problems:#?}"
    );
    assert!(
        problems[0].message.contains("found: equals, notEquals"),
        "{problems:#?}"
    );
    assert!(problems[1].message.contains("compares numbers"), "{problems:#?}");
    assert!(problems[2].message.contains("needs a `fieldPath`"), "{problems:#?}");
}

#[test]
fn a_url_whose_start_comes_from_the_alert_is_refused() {
    the_problem(
        "http-url-from-alert.yaml",
        "http",
        Some("notify"),
        "spec.steps[0].http.url",
        &["starts with a value from the alert", "param or a secret"],
    );
}

#[test]
fn a_method_that_is_not_http_is_refused() {
    the_problem(
        "bad-http-method.yaml",
        "http",
        Some("notify"),
        "spec.steps[0].http.method",
        &["\"SEND MESSAGE\"", "not an HTTP method"],
    );
}

#[test]
fn an_http_step_with_both_a_body_and_json_is_refused() {
    the_problem(
        "http-body-and-json.yaml",
        "http",
        Some("notify"),
        "spec.steps[0].http",
        &["either `body` or `json`, not both"],
    );
}

#[test]
fn a_secret_without_a_source_is_refused() {
    the_problem(
        "http-secret-without-source.yaml",
        "http",
        Some("notify"),
        "spec.steps[0].http.secrets.hookToken",
        &["exactly one of `env` or `file`"],
    );
}

#[test]
fn a_templated_json_text_body_must_be_written_as_json_so_values_cannot_break_it() {
    the_problem(
        "json-looking-body.yaml",
        "http",
        Some("notify"),
        "spec.steps[0].http.body",
        &["json:", "structure"],
    );
}

// ---- forEach ----

#[test]
fn a_for_each_inside_a_for_each_is_refused() {
    the_problem(
        "for-each-nested.yaml",
        "for-each-form",
        Some("each-instance"),
        "spec.steps[0].forEach.steps[0].type",
        &["cannot contain another forEach", "one forEach"],
    );
}

#[test]
fn a_for_each_over_an_empty_list_is_refused() {
    the_problem(
        "for-each-empty-items.yaml",
        "for-each-form",
        Some("fence"),
        "spec.steps[0].forEach.items",
        &["empty list", "nothing to repeat"],
    );
}

#[test]
fn a_for_each_may_run_at_most_ten_iterations_at_once() {
    the_problem(
        "for-each-unbounded-concurrency.yaml",
        "for-each-form",
        Some("restart"),
        "spec.steps[0].forEach.concurrency",
        &["concurrency 50", "from 1 to 10"],
    );
}

#[test]
fn an_unknown_for_each_field_is_named_where_it_is() {
    the_load_error(
        "for-each-unknown-field.yaml",
        12,
        7,
        &["unknown field `parallelism`", "`concurrency`"],
    );
}

#[test]
fn max_objects_from_a_param_must_render_to_a_count() {
    the_problem(
        "delete-max-objects-from-param.yaml",
        "delete-form",
        Some("delete-pvc"),
        "spec.steps[0].delete.maxObjects",
        &["renders to \"none\"", "whole number from 1"],
    );
}

#[test]
fn the_loop_variable_is_known_inside_a_for_each_and_nowhere_else() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("loop.yaml");
    std::fs::write(
        &path,
        "apiVersion: recoverd.io/v1alpha1\nkind: RecoveryPlan\nmetadata: {name: l}\nspec:\n  steps:\n  - name: each\n    type: forEach\n    forEach:\n      items: [a, b]\n      steps:\n      - name: read\n        type: readField\n        readField: {apiVersion: v1, resource: configmaps, name: \"{{ Values.item }}\", fieldPath: data.x, outputKey: x}\n  - name: after\n    type: readField\n    readField: {apiVersion: v1, resource: configmaps, name: \"{{ Values.item }}-{{ Values.x }}\", fieldPath: data.y, outputKey: y}\n",
    )
    .unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let (plans, errors) = plan::load_str(&path, &text);
    assert!(errors.is_empty(), "{errors:#?}");
    let problems = plan::validate(&plans[0].plan.spec, None).problems;
    let mut messages: Vec<_> = problems.iter().map(|p| (p.field.as_str(), p.rule)).collect();
    messages.sort();
    assert_eq!(
        messages,
        [
            ("spec.steps[1].readField.name", plan::Rule::UndefinedValue),
            ("spec.steps[1].readField.name", plan::Rule::UndefinedValue),
        ],
        "{problems:#?}"
    );
    assert!(problems.iter().any(|p| p.message.contains("`Values.item`")));
    assert!(problems.iter().any(|p| p.message.contains("`Values.x`")));
}
