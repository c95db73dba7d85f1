"""What a run reports: bootstrap statistics and quality scores, markdown tables, plots."""
