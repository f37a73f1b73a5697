//! TEMPORARY stand-in for checks::sod while it is written.
use serde::Deserialize;
use std::collections::BTreeMap;
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageRef {
    pub alias: String,
    pub id: Option<String>,
    pub display_name: Option<String>,
}
#[derive(Debug, Clone, Deserialize)]
pub struct RawFunction {}
#[derive(Debug, Clone, Deserialize)]
pub struct RawRisk {}
#[derive(Debug, Clone, Deserialize)]
pub struct RawException {}
#[derive(Debug)]
pub struct SodRules;
impl SodRules {
    pub fn build(
        _f: &BTreeMap<String, RawFunction>,
        _r: &[RawRisk],
        _e: &[RawException],
        _p: &BTreeMap<String, PackageRef>,
    ) -> Result<SodRules, Vec<String>> {
        Ok(SodRules)
    }
    pub fn warnings(&self, _now: jiff::Timestamp) -> Vec<String> {
        vec![]
    }
    pub fn risk_count(&self) -> usize {
        0
    }
}
