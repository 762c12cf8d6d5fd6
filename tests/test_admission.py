"""The server's rules for connections when descriptors run out (pure, no sockets)."""

from __future__ import annotations

import errno

import pytest

from memoh_trio._admission import OUT_OF_RESOURCES, Admission, connection_cap


@pytest.mark.parametrize(("soft", "cap"), [(256, 224), (1024, 896), (20000, 17500), (40, 8),
                                           (10, 1)])
def test_cap_keeps_a_reserve_for_the_calls(soft: int, cap: int) -> None:
    assert connection_cap(soft) == cap


def test_out_of_descriptors_is_out_of_resources() -> None:
    assert {errno.EMFILE, errno.ENFILE} <= OUT_OF_RESOURCES


def test_oldest_untrusted_are_shed_first_and_trusted_never() -> None:
    adm = Admission(cap=4)
    keys = [adm.accepted() for _ in range(4)]
    adm.trust(keys[0])
    assert adm.full() and adm.room_needed() == 1
    assert adm.shed(2) == [keys[1], keys[2]]
    # Being closed, they still hold their descriptors: still full, and not picked again.
    assert adm.full() and adm.closing() == 2
    assert adm.shed(5) == [keys[3]]
    assert adm.shed(1) == []  # only the trusted one is left not closing
    adm.closed(keys[1])
    assert not adm.full() and adm.room_needed() == 0
    assert adm.shed_total == 3


def test_closed_is_idempotent_and_unknown_keys_are_ignored() -> None:
    adm = Admission(cap=2)
    key = adm.accepted()
    adm.closed(key)
    adm.closed(key)
    adm.trust(key)  # a call reported after the connection went: nothing to do
    assert len(adm) == 0


def test_a_trusted_connection_is_not_shed_even_if_oldest() -> None:
    adm = Admission(cap=2)
    first, second = adm.accepted(), adm.accepted()
    adm.trust(first)
    assert adm.shed(1) == [second]


def test_cap_must_be_positive() -> None:
    with pytest.raises(ValueError, match="cap"):
        Admission(cap=0)
