"""The driver's lines about lost nodes and reruns (pipeline/grid/board.py), read from board contents such
as the loopback cluster test produces: each said once, and a lost-node line corrected when the point it
named finished on that node after all."""

from __future__ import annotations

from pipeline.grid import board

HEAD, WORKER = "a" * 40, "b" * 40
ALIVE = {HEAD: "127.0.0.1", WORKER: "192.0.2.2"}


def test_a_lost_node_is_named_once_with_the_unfinished_points_it_held():
    watch = board.Watch()
    starts = {"p-seed-5": [(HEAD, "h")], "p-seed-6": [(WORKER, "w")], "p-seed-7": [(WORKER, "w")]}
    assert board.lost_nodes(watch, ALIVE, starts, {"p-seed-5", "p-seed-6", "p-seed-7"}) == []
    lines = board.lost_nodes(watch, {HEAD: "127.0.0.1"}, starts, {"p-seed-5", "p-seed-6"})
    assert lines == ["node bbbbbbbb (192.0.2.2) lost: Ray reruns p-seed-6 on the other nodes"]
    assert board.lost_nodes(watch, {HEAD: "127.0.0.1"}, starts, {"p-seed-5", "p-seed-6"}) == []


def test_a_rerun_is_said_once_and_noted_with_the_lost_node_as_its_cause():
    watch = board.Watch()
    board.lost_nodes(watch, ALIVE, {}, set())
    board.lost_nodes(watch, {HEAD: "127.0.0.1"}, {"p": [(WORKER, "w")]}, {"p"})
    starts = {"p": [(WORKER, "w"), (HEAD, "h")]}
    (line,) = board.reruns(watch, starts)
    assert line.startswith("point p rerun on node aaaaaaaa (h), attempt 2") and board.reruns(watch, starts) == []
    assert board.closing_note(watch, starts) == ["p was rerun on node aaaaaaaa (h) after node bbbbbbbb (192.0.2.2) was lost"]
    assert board.finished_where_lost(watch, "p", HEAD) is None  # its rerun's result: nothing to correct


def test_a_point_that_finished_on_the_lost_node_is_said_not_rerun():
    watch = board.Watch()
    board.lost_nodes(watch, ALIVE, {}, set())
    board.lost_nodes(watch, {HEAD: "127.0.0.1"}, {"p": [(WORKER, "w")]}, {"p"})
    assert board.finished_where_lost(watch, "p", WORKER) == "point p finished on node bbbbbbbb before that node was lost: not rerun"
    assert board.finished_where_lost(watch, "p", WORKER) is None  # said once
    assert board.finished_where_lost(watch, "q", HEAD) is None
