//! What `recoverd demo` runs on (data, and writing it out): a two-cluster CloudNativePG world
//! with an HAProxy configuration on a third cluster, the `cnpg-switchover` plan from `plans/`,
//! an Alertmanager payload that matches it, and what the clusters must hold afterwards. All of
//! it is compiled into the binary, so the demo works from any directory.

use std::path::{Path, PathBuf};

use crate::world::Expectations;

pub const WORLD: &str = include_str!("demo/world.yaml");
const OBJECTS: &[(&str, &str)] = &[
    ("pg-north.yaml", include_str!("demo/pg-north.yaml")),
    ("pg-south.yaml", include_str!("demo/pg-south.yaml")),
    ("haproxy.yaml", include_str!("demo/haproxy.yaml")),
];
const CNPG_CRD: &str = include_str!("../../tests/data/crds/postgresql.cnpg.io_clusters.yaml");
/// The plan, as in `plans/cnpg-switchover.yaml`.
pub const PLAN: &str = include_str!("../../plans/cnpg-switchover.yaml");
/// An Alertmanager webhook payload (version 4) firing `CNPGPrimaryUnavailable` for pg-north.
pub const ALERT: &str = include_str!("demo/alert.json");
const EXPECT: &str = include_str!("demo/expect.yaml");

/// Writes the world, its CRD and objects, and the plan under `dir`; returns the paths of the
/// world file and of the plan file.
pub fn write(dir: &Path) -> std::io::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir.join("crds"))?;
    std::fs::write(dir.join("crds/postgresql.cnpg.io_clusters.yaml"), CNPG_CRD)?;
    for (name, text) in OBJECTS {
        std::fs::write(dir.join(name), text)?;
    }
    let world = dir.join("world.yaml");
    std::fs::write(&world, WORLD)?;
    let plan = dir.join("cnpg-switchover.yaml");
    std::fs::write(&plan, PLAN)?;
    Ok((world, plan))
}

/// What the three clusters must hold after the switchover.
pub fn expectations() -> Expectations {
    serde_yaml::from_str(EXPECT).expect("the demo's expectations are valid YAML")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_world_plan_and_alert_are_valid() {
        let dir = std::env::temp_dir().join(format!("recoverd-demo-test-{}", std::process::id()));
        let (world, plan) = write(&dir).unwrap();
        let (w, _) = crate::world::load(&world).unwrap();
        assert_eq!(w.clusters.len(), 3);
        let (plans, errors) = crate::plan::load_paths(&[plan]);
        assert!(errors.is_empty(), "{errors:?}");
        let alerts = crate::alert::parse(ALERT).unwrap();
        let plan = crate::plan::compile_one(&plans[0], None).unwrap();
        assert!(plan.matches(&alerts[0].labels));
        assert_eq!(expectations().expect.len(), 4);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
