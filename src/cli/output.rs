//! `-o/--output`: one flag, one set of format names, for every command that prints a result.
//! Each command says which formats it accepts ([`formats`]), so `--help` lists them and clap
//! refuses any other as a usage error. Machine formats (json, yaml, junit) are the only thing on
//! stdout; progress and narration go to stderr.

use clap::builder::{PossibleValuesParser, TypedValueParser};
use serde::Serialize;

use crate::record::{RunRecord, StepRecord, StepStatus};

/// A result's format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// For people; progress and result interleaved on stdout.
    #[default]
    Text,
    Json,
    Yaml,
    /// JUnit XML, for CI systems that show test reports.
    Junit,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Json => "json",
            Format::Yaml => "yaml",
            Format::Junit => "junit",
        }
    }

    /// Progress goes to stderr, so that stdout carries only the result.
    pub fn is_machine(self) -> bool {
        self != Format::Text
    }

    /// The progress printer for a command printing its result in this format.
    pub fn printer(self) -> super::print::Printer {
        if self.is_machine() {
            super::print::Printer::to_stderr()
        } else {
            super::print::Printer::new()
        }
    }
}

/// The value parser of a command's `-o`: only these formats, by name.
pub fn formats(allowed: &'static [Format]) -> impl TypedValueParser<Value = Format> {
    PossibleValuesParser::new(allowed.iter().map(|f| f.name())).map(|name| {
        [Format::Text, Format::Json, Format::Yaml, Format::Junit]
            .into_iter()
            .find(|f| f.name() == name)
            .expect("a possible value is a format")
    })
}

/// A value as JSON (pretty) or YAML, ending in a newline; `None` for text and junit, which each
/// command writes itself.
pub fn serialized(format: Format, value: &impl Serialize) -> anyhow::Result<Option<String>> {
    Ok(match format {
        Format::Json => Some(serde_json::to_string_pretty(value)? + "\n"),
        Format::Yaml => Some(serde_yaml::to_string(value)?),
        Format::Text | Format::Junit => None,
    })
}

/// Escapes text for an XML attribute or element.
pub fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One `<testsuite>`, with its counts for the document's totals.
pub struct Suite {
    pub tests: usize,
    pub failures: usize,
    pub xml: String,
}

/// A JUnit document of these suites.
pub fn junit_document(name: &str, suites: &[Suite]) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"{}\" tests=\"{}\" failures=\"{}\">\n{}</testsuites>\n",
        xml_escape(name),
        suites.iter().map(|s| s.tests).sum::<usize>(),
        suites.iter().map(|s| s.failures).sum::<usize>(),
        suites.iter().map(|s| s.xml.as_str()).collect::<String>()
    )
}

/// One run as a `<testsuite>`: a test case per step (onFailure steps too), a failure for each
/// failed step (tolerated ones included, saying so), skipped steps as skipped; a run that
/// failed before any step failed (a refused precondition) is one more failing case.
pub fn run_suite(run: &RunRecord) -> Suite {
    // A forEach's iterations follow it, each a case of its own.
    let steps: Vec<(&str, &StepRecord)> = run
        .steps
        .iter()
        .map(|s| ("steps", s))
        .chain(run.on_failure.iter().map(|s| ("onFailure", s)))
        .flat_map(|(group, s)| std::iter::once((group, s)).chain(s.children.iter().map(move |c| (group, c))))
        .collect();
    let mut cases = String::new();
    let mut failures = 0;
    let mut skipped = 0;
    for (group, s) in &steps {
        let time = s.duration_ms.unwrap_or(0) as f64 / 1000.0;
        cases += &format!(
            "  <testcase classname=\"{}.{group}\" name=\"{}\" time=\"{time:.3}\">",
            xml_escape(&run.plan),
            xml_escape(&s.name)
        );
        match s.status {
            StepStatus::Failed => {
                failures += 1;
                let tolerated = if s.continued {
                    " (tolerated: onError: continue)"
                } else {
                    ""
                };
                cases += &format!(
                    "\n    <failure message=\"{}{tolerated}\" type=\"{}\"/>\n  ",
                    xml_escape(s.error.as_deref().unwrap_or("failed")),
                    xml_escape(s.reason.as_deref().unwrap_or("failed"))
                );
            }
            StepStatus::Skipped | StepStatus::Pending => {
                skipped += 1;
                cases += &format!(
                    "\n    <skipped message=\"{}\"/>\n  ",
                    xml_escape(s.error.as_deref().unwrap_or("not run"))
                );
            }
            StepStatus::Succeeded | StepStatus::Running | StepStatus::WaitingForApproval => {}
        }
        cases += "</testcase>\n";
    }
    let mut tests = steps.len();
    if !run.phase.is_success() && failures == 0 {
        tests += 1;
        failures += 1;
        cases += &format!(
            "  <testcase classname=\"{}\" name=\"run\">\n    <failure message=\"run {}: {}\"/>\n  </testcase>\n",
            xml_escape(&run.plan),
            run.phase.as_str(),
            xml_escape(run.error.as_deref().unwrap_or(""))
        );
    }
    let time = run.duration_ms.unwrap_or(0) as f64 / 1000.0;
    let xml = format!(
        "<testsuite name=\"run {} of plan {}\" tests=\"{tests}\" failures=\"{failures}\" skipped=\"{skipped}\" time=\"{time:.3}\">\n{cases}</testsuite>\n",
        xml_escape(&run.id),
        xml_escape(&run.plan)
    );
    Suite { tests, failures, xml }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Phase;

    #[test]
    fn a_failed_run_is_a_suite_with_one_failure_per_failed_step_and_the_totals_add_up() {
        let step = |name: &str, status| StepRecord {
            name: name.into(),
            status,
            error: (status != StepStatus::Succeeded).then(|| format!("{name} <broke>")),
            ..Default::default()
        };
        let run = RunRecord {
            id: "r1".into(),
            plan: "ops/p".into(),
            phase: Phase::Failed,
            steps: vec![
                step("a", StepStatus::Succeeded),
                step("b", StepStatus::Failed),
                step("c", StepStatus::Skipped),
            ],
            ..Default::default()
        };
        let suite = run_suite(&run).xml;
        assert!(suite.contains("tests=\"3\" failures=\"1\" skipped=\"1\""), "{suite}");
        assert!(suite.contains("message=\"b &lt;broke&gt;\""), "{suite}");
        let doc = junit_document("recoverd run", &[run_suite(&run), run_suite(&run)]);
        assert!(
            doc.contains("<testsuites name=\"recoverd run\" tests=\"6\" failures=\"2\">"),
            "{doc}"
        );
    }

    #[test]
    fn a_run_refused_before_any_step_failed_is_a_failing_case_of_its_own() {
        let run = RunRecord {
            id: "r2".into(),
            plan: "ops/p".into(),
            phase: Phase::Failed,
            error: Some("precondition".into()),
            ..Default::default()
        };
        let suite = run_suite(&run).xml;
        assert!(suite.contains("tests=\"1\" failures=\"1\""), "{suite}");
        assert!(
            suite.contains("<failure message=\"run Failed: precondition\"/>"),
            "{suite}"
        );
    }
}
