"""Object IDs and generated service names."""

from __future__ import annotations

import random
import secrets
import string

_ALPHABET = string.digits + string.ascii_lowercase

ID_LENGTH = 25
SHORT_ID_LENGTH = 12


def new_id(rng: random.Random | None = None) -> str:
    """A 25-character lowercase base-36 ID, as swarmkit makes them: 128 random bits in base 36.

    IDs name objects, they guard nothing, so they come from the random module (seeded from the OS, and
    reseeded in a forked child) rather than a system call each: the orchestrator makes a hundred thousand at
    once."""
    if rng is not None:
        return "".join(rng.choice(_ALPHABET) for _ in range(ID_LENGTH))
    number = random.getrandbits(128)
    digits = []
    for _ in range(ID_LENGTH):
        number, digit = divmod(number, 36)
        digits.append(_ALPHABET[digit])
    return "".join(digits)


def short_id(full: str) -> str:
    return full[:SHORT_ID_LENGTH]


def random_secret(length: int = 25) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


_ADJECTIVES = (
    "admiring adoring agitated amazing angry awesome blissful bold boring brave busy charming clever cool "
    "compassionate competent confident crazy dazzling determined distracted dreamy eager ecstatic elastic "
    "elated elegant eloquent epic fervent festive flamboyant focused friendly frosty gallant gifted goofy "
    "gracious happy hardcore heuristic hopeful hungry infallible inspiring jolly jovial keen kind laughing "
    "loving lucid magical modest musing mystifying naughty nervous nifty nostalgic objective optimistic "
    "peaceful pedantic pensive practical priceless quirky quizzical relaxed reverent romantic sad serene "
    "sharp silly sleepy stoic strange stupefied suspicious sweet tender thirsty trusting upbeat vibrant "
    "vigilant vigorous wizardly wonderful xenodochial youthful zealous zen"
).split()

_SURNAMES = (
    "albattani allen almeida archimedes ardinghelli aryabhata austin babbage banach bardeen bartik bassi "
    "bell benz bhabha bhaskara blackwell bohr booth borg bose boyd brahmagupta brattain brown carson "
    "chandrasekhar clarke colden cori cray curie darwin davinci dijkstra dubinsky easley edison einstein "
    "elion engelbart euclid euler fermat fermi feynman franklin galileo gates goldberg goldstine goldwasser "
    "golick goodall hamilton hawking heisenberg hermann heyrovsky hodgkin hoover hopper hugle hypatia "
    "jackson jang jennings jepsen johnson joliot jones kalam kare keller kepler khorana kilby kirch knuth "
    "kowalevski lalande lamarr lamport leakey leavitt lewin lichterman liskov lovelace lumiere mahavira "
    "mayer mccarthy mcclintock mclean mcnulty meitner meninsky mestorf minsky mirzakhani montalcini morse "
    "murdock napier nash neumann newton nightingale nobel noether northcutt noyce panini pare pasteur "
    "payne perlman pike poincare poitras ptolemy raman ramanujan ride ritchie roentgen rosalind saha "
    "sammet shannon shaw shirley shockley sinoussi snyder spence stallman stonebraker swanson swartz "
    "swirles tesla thompson torvalds turing varahamihira visvesvaraya volhard wescoff wiles williams "
    "wilson wing wozniak wright yalow yonath"
).split()


def generated_name(taken: set[str] | frozenset[str] = frozenset(), rng: random.Random | None = None) -> str:
    """An adjective_surname name not in `taken`, as Docker names unnamed services."""
    pick = (rng or random.SystemRandom()).choice
    for _ in range(100):
        name = f"{pick(_ADJECTIVES)}_{pick(_SURNAMES)}"
        if name != "boring_wozniak" and name not in taken:
            return name
    return f"{pick(_ADJECTIVES)}_{pick(_SURNAMES)}{(rng or random.SystemRandom()).randint(0, 99)}"
