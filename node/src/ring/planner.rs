//! Placeholder replaced by the planner work.
