"""Reports: the per-run report (report stage) and the cross-run comparison (`ganpipe compare`)."""
