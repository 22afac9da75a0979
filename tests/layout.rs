//! The README's layout table and the source tree agree: every path it names exists, and every
//! file and directory under `src/` is named (by its path, or by its file name in the row of a
//! directory that holds it), so a newcomer can find each stage of the flow from the table.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// (the paths of a row, every backticked word of the row)
fn rows() -> Vec<(Vec<String>, BTreeSet<String>)> {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let table = readme.split("## Layout\n").nth(1).expect("README has a Layout section");
    let table = table.split("\n## ").next().unwrap();
    let tick = regex::Regex::new(r"`([^`]+)`").unwrap();
    table
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').collect();
            let paths = tick.captures_iter(cells[1]).map(|c| c[1].to_string()).collect();
            let words = tick.captures_iter(line).map(|c| c[1].to_string()).collect();
            (paths, words)
        })
        .collect()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        out.push(path.clone());
        if path.is_dir() {
            walk(&path, out);
        }
    }
}

#[test]
fn every_path_in_the_layout_table_exists() {
    for (paths, _) in rows() {
        for p in paths {
            assert!(
                repo().join(&p).exists(),
                "README layout names {p}, which does not exist"
            );
        }
    }
}

#[test]
fn every_file_under_src_is_in_the_layout_table() {
    let rows = rows();
    let mut files = Vec::new();
    walk(&repo().join("src"), &mut files);
    let mut missing = Vec::new();
    for file in files {
        let rel = file.strip_prefix(repo()).unwrap().to_string_lossy().to_string();
        // Data files of a directory (the demo's YAML) belong to that directory's row.
        if !file.is_dir() && file.extension().is_some_and(|e| e != "rs") {
            continue;
        }
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let named = rows.iter().any(|(paths, words)| {
            paths.iter().any(|p| {
                let p = p.trim_end_matches('/');
                if rel == p {
                    return true;
                }
                // In a directory's row, by its file name (`mod.rs` and the like) or its
                // sub-directory (`validate/`); or inside a directory the row names without listing.
                rel.starts_with(&format!("{p}/"))
                    && (words.contains(&name)
                        || words.contains(&format!("{name}/"))
                        || rel
                            .strip_prefix(&format!("{p}/"))
                            .and_then(|r| r.split('/').next())
                            .is_some_and(|first| words.contains(&format!("{first}/")) || words.contains(first)))
            })
        });
        if !named {
            missing.push(rel);
        }
    }
    assert!(missing.is_empty(), "not in the README layout table: {missing:?}");
}
