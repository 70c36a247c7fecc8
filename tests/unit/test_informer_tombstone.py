"""An informer keeps a tombstone per watched object: what a DELETED found by a relist
carries must be what the handlers route by (labels, the controller reference)."""

from __future__ import annotations

import sys

from celery_operator.k8s.informer import revive, tombstone

POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {
        "name": "shop-emails-7d9c-abcde",
        "namespace": "team-a",
        "uid": "5f0c6f8e-3c1a-4f77-9a55-2a1d8f1c0b11",
        "resourceVersion": "48213",
        "generateName": "shop-emails-7d9c-",
        "labels": {"celeryproject.org/pool": "emails", "pod-template-hash": "7d9c"},
        "annotations": {"big": "x" * 1000},
        "ownerReferences": [
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": "shop-emails-7d9c",
                "uid": "0d6b1f2a-7e54-4c1b-8f0e-9b3d2c1a0f99",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    },
    "spec": {"containers": [{"name": "worker", "image": "shop:1"}]},
    "status": {"phase": "Running"},
}


def test_a_tombstone_gives_back_who_it_was_and_whose() -> None:
    meta = POD["metadata"]
    assert revive(tombstone(POD)) == {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            **{k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion")},
            "labels": meta["labels"],
            "ownerReferences": meta["ownerReferences"],
        },
    }


def test_a_bare_object_gives_back_only_what_it_had() -> None:
    body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "uid": "u"}}
    assert revive(tombstone(body)) == {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s", "uid": "u"},
    }


def test_a_tombstone_holds_no_dict_and_shares_its_strings() -> None:
    """Thousands are kept: tuples of interned strings, not the decoded body's dicts."""
    stone = tombstone(POD)

    def walk(x: object) -> list[object]:
        return [y for v in x for y in walk(v)] if isinstance(x, tuple) else [x]

    leaves = walk(stone)
    assert not any(isinstance(x, dict | list) for x in leaves)
    # interned: an equal string made anew interns to the very object kept
    assert all(x is sys.intern("".join(list(x))) for x in leaves if isinstance(x, str))
