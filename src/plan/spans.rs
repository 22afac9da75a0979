//! Where each field of a plan document is (pure): field paths as validation names them
//! (`spec.steps[2].patch.override.fieldPath`) mapped to the line and column of their key (or of
//! the item, in a list), read from the YAML parser's events. Lets every problem point at the
//! exact field rather than at its step.

use std::collections::BTreeMap;

use granit_parser::{Event, Parser};

/// Line (1-based, in the file) and column (1-based) of every field of one document.
#[derive(Clone, Debug, Default)]
pub struct Positions {
    map: BTreeMap<String, (usize, usize)>,
    first_line: usize,
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, next: usize },
}

impl Positions {
    /// Positions in one YAML document whose first line is line `first_line` of its file. A
    /// document the parser rejects yields what it read before the error.
    pub fn of_document(text: &str, first_line: usize) -> Self {
        let first_line = first_line.max(1);
        let mut map = BTreeMap::new();
        let mut stack: Vec<Frame> = Vec::new();
        let at = |line: usize, col: usize| (line + first_line - 1, col + 1);
        for event in Parser::new_from_str(text) {
            let Ok((event, span)) = event else { break };
            let pos = at(span.start.line(), span.start.col());
            // The path of a node starting here, and whether it is a mapping key.
            let mut node_path = |stack: &mut Vec<Frame>, is_scalar: Option<&str>| -> Option<String> {
                match stack.last_mut() {
                    None => Some(String::new()),
                    Some(Frame::Seq { path, next }) => {
                        let p = format!("{path}[{next}]");
                        *next += 1;
                        map.entry(p.clone()).or_insert(pos);
                        Some(p)
                    }
                    Some(Frame::Map { path, key }) => match key.take() {
                        Some(k) => Some(join(path, &k)),
                        None => {
                            // A key: remember where it is; the value comes next.
                            if let Some(k) = is_scalar {
                                map.insert(join(path, k), pos);
                                *key = Some(k.to_string());
                            }
                            None
                        }
                    },
                }
            };
            match event {
                Event::Scalar(value, ..) => {
                    node_path(&mut stack, Some(&value));
                }
                Event::MappingStart(..) => {
                    let path = node_path(&mut stack, None).unwrap_or_default();
                    map.entry(path.clone()).or_insert(pos);
                    stack.push(Frame::Map { path, key: None });
                }
                Event::SequenceStart(..) => {
                    let path = node_path(&mut stack, None).unwrap_or_default();
                    map.entry(path.clone()).or_insert(pos);
                    stack.push(Frame::Seq { path, next: 0 });
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                }
                Event::Alias(..) => {
                    node_path(&mut stack, None);
                }
                _ => {}
            }
        }
        Positions { map, first_line }
    }

    /// Where a field is; for a field that is not written (a missing `timeout`), where its
    /// nearest written parent is; at worst the document's first line.
    pub fn locate(&self, path: &str) -> (usize, usize) {
        let mut p = path;
        loop {
            if let Some(pos) = self.map.get(p) {
                return *pos;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None => return self.map.get("").copied().unwrap_or((self.first_line, 1)),
            }
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAN: &str = "apiVersion: recoverd.io/v1alpha1
kind: RecoveryPlan
spec:
  steps:
  - name: a
    type: patch
    patch: {name: x, override: {fieldPath: spec.a}}
  - name: b
    type: wait
    wait:
      duration: 5s
";

    #[test]
    fn fields_are_found_at_their_keys_lines_and_columns() {
        let p = Positions::of_document(PLAN, 10);
        assert_eq!(p.locate("spec.steps[0].name"), (14, 5));
        assert_eq!(p.locate("spec.steps[0].patch.override.fieldPath"), (16, 33));
        assert_eq!(p.locate("spec.steps[1].wait.duration"), (20, 7));
        assert_eq!(p.locate("spec.steps[1]"), (17, 5));
    }

    #[test]
    fn a_missing_field_is_located_at_its_nearest_parent() {
        let p = Positions::of_document(PLAN, 1);
        assert_eq!(p.locate("spec.steps[1].wait.timeout"), (10, 5));
        assert_eq!(p.locate("spec.nothing"), (3, 1));
        assert_eq!(p.locate("elsewhere"), (1, 1));
    }
}
