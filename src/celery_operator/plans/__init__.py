"""Pure decisions: from what a reconcile gathered to what it applies and the status it writes."""
