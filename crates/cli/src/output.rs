//! Printing results as tables, YAML or JSON.

use wukong_planner::PlanDocument;

use crate::{Failure, Format};

/// Prints plans: a table each, a YAML stream, or one JSON array.
pub fn print_plans(plans: &[PlanDocument], format: Format) -> Result<(), Failure> {
    match format {
        Format::Table => {
            for (i, p) in plans.iter().enumerate() {
                if i > 0 {
                    println!();
                }
                print!("{}", p.table());
            }
        }
        Format::Yaml => {
            for p in plans {
                println!("---");
                print!(
                    "{}",
                    serde_yaml::to_string(p).map_err(|e| Failure::Failed(e.to_string()))?
                );
            }
        }
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(plans).map_err(|e| Failure::Failed(e.to_string()))?
        ),
    }
    Ok(())
}
