"""`ganpipe grid`: an experiment grid as one Ray task per point, on a local Ray instance or a cluster.

points   the -S product (DVC's own parser and sweeper) and each point's experiment name
checks   everything refused before anything is submitted, each in one paragraph
cluster  connecting to Ray (a local instance, or an address checked for reachability first)
task     the Ray tasks: the shared stages once, and one grid point in a fresh clone
guard    the process that runs a point's dvc command and stops it when its Ray worker goes away
driver   submit, follow progress, collect, pull the experiments back, print the summary
"""
