"""StopScanner: what of a growing text is safe to emit."""

from __future__ import annotations

from troop_worker.engine.stops import StopScanner


def feed_all(scanner: StopScanner, pieces: list[str]) -> list[str]:
    text, out = "", []
    for piece in pieces:
        text += piece
        out.append(scanner.feed(text))
    return out


def test_no_stops_emits_everything() -> None:
    assert feed_all(StopScanner([]), ["Hel", "lo", " world"]) == ["Hel", "lo", " world"]


def test_holds_back_a_possible_stop_start_then_releases_it() -> None:
    scanner = StopScanner(["END"])
    assert feed_all(scanner, ["one E", "N", "x"]) == ["one ", "", "ENx"]
    assert not scanner.stopped


def test_stop_split_across_pieces_is_never_emitted() -> None:
    scanner = StopScanner(["\n\nUser:"])
    assert "".join(feed_all(scanner, ["Hi.", "\n", "\nUs", "er:", " more"])) == "Hi."
    assert scanner.stopped
    assert scanner.feed("Hi.\n\nUser: more and more") == ""


def test_earliest_of_several_stops_wins() -> None:
    scanner = StopScanner(["b", "cd"])
    assert scanner.feed("a cd b") == "a "
    assert scanner.stopped


def test_half_decoded_character_is_held() -> None:
    scanner = StopScanner([])
    assert scanner.feed("caf\ufffd") == "caf"
    assert scanner.feed("café") == "é"


def test_final_flushes_the_held_tail() -> None:
    scanner = StopScanner(["ENDING"])
    assert scanner.feed("the END") == "the "
    assert scanner.feed("the END", final=True) == "END"
