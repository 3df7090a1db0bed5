"""`repgeom plan`: what a run costs before it is submitted (docs/plan.md)."""
