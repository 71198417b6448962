"""What a person is shown of a segment's labels: the most specific ones (a CNN + YAMNet library stored
"Animal 0.97, Domestic animals, pets 0.96, dog 0.96, Dog 0.93" for a bark, and its first label was "Animal")."""
import pytest

from nels.search.labels import specific_labels


def L(*pairs):
    return [{"label": a, "prob": p} for a, p in pairs]


def test_a_narrower_label_replaces_the_broader_ones_it_lies_under():
    bark = L(("Animal", 0.97), ("Domestic animals, pets", 0.96), ("dog", 0.96), ("Dog", 0.93))
    assert specific_labels(bark) == L(("dog", 0.96))  # ESC-50's dog lies under AudioSet's Dog, under pets, Animal
    sheep = L(("Livestock, farm animals, working animals", 0.91), ("sheep", 0.87), ("Vehicle", 0.3))
    assert specific_labels(sheep) == L(("sheep", 0.87), ("Vehicle", 0.3))


def test_unrelated_or_weak_labels_stay_in_order():
    assert specific_labels(L(("Music", 0.65), ("door_wood_knock", 0.32))) == L(("Music", 0.65), ("door_wood_knock", 0.32))
    # a narrower label far less probable than its parent does not replace it
    assert specific_labels(L(("Animal", 0.9), ("Dog", 0.2))) == L(("Animal", 0.9), ("Dog", 0.2))
    assert specific_labels(L(("not a class of any vocabulary", 0.5), ("Animal", 0.4))) == \
        L(("not a class of any vocabulary", 0.5), ("Animal", 0.4))
    assert specific_labels([]) == [] and specific_labels(L(("Animal", 0.9))) == L(("Animal", 0.9))


def test_the_clip_timeline_names_the_specific_sound():
    pytest.importorskip("fastapi")
    from nels.web.routes.clips import events

    segs = [{"segment_id": i, "start": float(i), "end": i + 2.0,
             "labels": L(("Livestock, farm animals, working animals", 0.9), ("sheep", 0.8))} for i in range(4)]
    segs += [{"segment_id": 4 + i, "start": 4.0 + i, "end": 6.0 + i,
              "labels": L(("Animal", 0.95), ("Dog", 0.9), ("Bark", 0.85))} for i in range(4)]
    assert [(e["label"], e["start"], e["end"]) for e in events(segs)] == [("sheep", 0.0, 5.0), ("Bark", 4.0, 9.0)]


def test_a_label_filter_looks_at_the_labels_shown():
    from nels.search.results import Filters

    row = {"labels": L(("Animal", 0.95), ("Livestock, farm animals, working animals", 0.93), ("Sheep", 0.9),
                       ("sheep", 0.88), ("Goat", 0.1))}
    assert Filters(label="sheep").keep(row)  # the fourth label stored, the first shown
    assert not Filters(label="dog").keep(row)


def test_query_labels_are_called_guesses_when_no_class_is_likely(capsys):
    """A speech file the ESC-50 CNN calls 'dog 0.30' is not 'a sound like a dog': the CLI says no class is sure."""
    from nels.cli.search import print_answer

    print_answer({"query_labels": L(("dog", 0.30), ("coughing", 0.14)), "results": []})
    assert "no class is sure of the query; best guesses: dog (0.30), coughing (0.14)" in capsys.readouterr().out
    print_answer({"query_labels": L(("rain", 0.58), ("crickets", 0.12)), "results": []})
    assert "the query sounds like: rain (0.58), crickets (0.12)" in capsys.readouterr().out
