"""The questions asked of the fact tables (`repgeom/resources/facts/`), as data: one record per relation, read by
`facts.table_relations`. A relation and its inverse ask about the same fact (`fact`), so that a fact is asked at most
once in the whole dataset; `near` names how plausible wrong answers are found (`facts.NEAR_ANSWERS`)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TableQuestion:
    """Questions "`ask` -> `answer`" over the rows of table `table`, in several wordings (`{x}`: the asked value;
    `{the_x}`, `{a_x}`, `{A_x}`: with an article)."""
    subject: str
    name: str
    fact: str              # what is asked about; the same for a relation and its inverse
    table: str
    ask: str               # the column the question names
    answer: str            # the column that answers it
    key: str               # the column naming the fact's row (the same for a relation and its inverse)
    wordings: tuple[str, ...]
    near: str | None = None  # a rule of `facts.NEAR_ANSWERS`: plausible wrong answers, drawn first


TABLE_QUESTIONS: tuple[TableQuestion, ...] = (
    # geography
    TableQuestion("geography", "capital_of", fact="capital", table="countries",
                  ask="country", answer="capital", key="country", near="same_continent",
                  wordings=("What is the capital of {the_x}?", "Which city is the capital of {the_x}?",
                            "What is the capital city of {the_x}?")),
    TableQuestion("geography", "country_of_capital", fact="capital", table="countries",
                  ask="capital", answer="country", key="country", near="same_continent",
                  wordings=("{x} is the capital of which country?", "Which country has {x} as its capital?",
                            "Of which country is {x} the capital?")),
    TableQuestion("geography", "continent_of", fact="continent", table="countries",
                  ask="country", answer="continent", key="country",
                  wordings=("On which continent is {the_x}?", "Which continent is {the_x} located in?",
                            "In which continent is {the_x} located?")),
    TableQuestion("geography", "currency_of", fact="currency", table="countries",
                  ask="country", answer="currency", key="country",
                  wordings=("What is the currency of {the_x}?", "Which currency is used in {the_x}?",
                            "What is the official currency of {the_x}?")),
    # chemistry
    TableQuestion("chemistry", "symbol_of_element", fact="symbol", table="elements",
                  ask="name", answer="symbol", key="name", near="same_initial",
                  wordings=("What is the chemical symbol for {x}?", "Which symbol represents the element {x}?",
                            "What is the symbol of the element {x}?")),
    TableQuestion("chemistry", "element_of_symbol", fact="symbol", table="elements",
                  ask="symbol", answer="name", key="name", near="same_initial",
                  wordings=("Which element has the chemical symbol {x}?",
                            "The chemical symbol {x} stands for which element?",
                            "Which element is represented by the symbol {x}?")),
    TableQuestion("chemistry", "atomic_number_of_element", fact="atomic_number", table="elements",
                  ask="name", answer="atomic_number", key="name", near="atomic_number_within_8",
                  wordings=("What is the atomic number of {x}?", "How many protons does an atom of {x} have?",
                            "What is the atomic number of the element {x}?")),
    TableQuestion("chemistry", "element_of_atomic_number", fact="atomic_number", table="elements",
                  ask="atomic_number", answer="name", key="name", near="atomic_number_within_8",
                  wordings=("Which element has the atomic number {x}?",
                            "Which element is number {x} in the periodic table?",
                            "Which element has atomic number {x}?")),
    TableQuestion("chemistry", "family_of_element", fact="family", table="element_families",
                  ask="element", answer="family", key="element",
                  wordings=("To which family of elements does {x} belong?", "What kind of element is {x}?",
                            "Which family of the periodic table does {x} belong to?")),
    # biology
    TableQuestion("biology", "group_of_animal", fact="group", table="animals",
                  ask="animal", answer="group", key="animal",
                  wordings=("What type of animal is the {x}?", "To which group of animals does the {x} belong?",
                            "Which animal group does the {x} belong to?")),
    TableQuestion("biology", "young_of_animal", fact="young", table="animal_young",
                  ask="animal", answer="young", key="animal",
                  wordings=("What is a young {x} called?", "What is the name for a baby {x}?",
                            "What do you call the young of the {x}?")),
    TableQuestion("biology", "animal_of_young", fact="young", table="animal_young",
                  ask="young", answer="animal", key="animal",
                  wordings=("Which animal's young is called {a_x}?", "{A_x} is the young of which animal?",
                            "Which animal's baby is known as {a_x}?")),
    # english vocabulary
    TableQuestion("english_vocabulary", "antonym_of", fact="antonym", table="antonyms",
                  ask="word", answer="antonym", key="word",
                  wordings=("What is the opposite of '{x}'?", "Which word means the opposite of '{x}'?",
                            "Which of the following is an antonym of '{x}'?")),
    TableQuestion("english_vocabulary", "plural_of", fact="plural", table="plurals",
                  ask="noun", answer="plural", key="noun", near="plural_traps",
                  wordings=("What is the plural of '{x}'?", "What is the plural form of the noun '{x}'?",
                            "Which of the following is the correct plural of '{x}'?")),
    TableQuestion("english_vocabulary", "singular_of", fact="plural", table="plurals",
                  ask="plural", answer="noun", key="noun",
                  wordings=("What is the singular of '{x}'?", "'{x}' is the plural of which noun?",
                            "What is the singular form of '{x}'?")),
    TableQuestion("english_vocabulary", "past_tense_of", fact="past", table="past_tense",
                  ask="verb", answer="past", key="verb", near="past_traps",
                  wordings=("What is the past tense of '{x}'?", "What is the simple past tense of the verb '{x}'?",
                            "Which of the following is the past tense of '{x}'?")),
    TableQuestion("english_vocabulary", "verb_of_past_tense", fact="past", table="past_tense",
                  ask="past", answer="verb", key="verb",
                  wordings=("'{x}' is the past tense of which verb?", "Of which verb is '{x}' the past tense?")),
    # physics
    TableQuestion("physics", "unit_of_quantity", fact="unit", table="si_units",
                  ask="quantity", answer="unit", key="unit",
                  wordings=("What is the SI unit of {x}?", "In which SI unit is {x} measured?",
                            "Which of the following is the SI unit of {x}?")),
    TableQuestion("physics", "quantity_of_unit", fact="unit", table="si_units",
                  ask="unit", answer="quantity", key="unit",
                  wordings=("The {x} is the SI unit of which quantity?",
                            "Which physical quantity has the {x} as its SI unit?",
                            "What does the SI unit {x} measure?")),
    TableQuestion("physics", "symbol_of_unit", fact="unit_symbol", table="si_units",
                  ask="unit", answer="symbol", key="unit", near="same_initial",
                  wordings=("What is the symbol for the {x}?", "Which symbol is used for the SI unit {x}?",
                            "What is the symbol of the unit {x}?")),
    TableQuestion("physics", "unit_of_symbol", fact="unit_symbol", table="si_units",
                  ask="symbol", answer="unit", key="unit", near="same_initial",
                  wordings=("Which SI unit has the symbol {x}?", "The unit symbol {x} stands for which unit?",
                            "Which unit is written with the symbol {x}?")),
    TableQuestion("physics", "factor_of_prefix", fact="prefix_factor", table="si_prefixes",
                  ask="prefix", answer="factor", key="prefix", near="same_exponent_sign",
                  wordings=("What factor does the SI prefix {x} stand for?",
                            "The SI prefix {x} multiplies a unit by which factor?",
                            "Which power of ten does the prefix {x} denote?")),
    TableQuestion("physics", "prefix_of_factor", fact="prefix_factor", table="si_prefixes",
                  ask="factor", answer="prefix", key="prefix",
                  wordings=("Which SI prefix stands for a factor of {x}?", "Which prefix multiplies a unit by {x}?")),
    TableQuestion("physics", "symbol_of_prefix", fact="prefix_symbol", table="si_prefixes",
                  ask="prefix", answer="symbol", key="prefix",
                  wordings=("What is the symbol of the SI prefix {x}?", "Which symbol is used for the prefix {x}?")),
    TableQuestion("physics", "prefix_of_symbol", fact="prefix_symbol", table="si_prefixes",
                  ask="symbol", answer="prefix", key="prefix",
                  wordings=("Which SI prefix has the symbol {x}?", "The prefix symbol {x} stands for which prefix?")),
    TableQuestion("physics", "quantity_of_instrument", fact="instrument", table="instruments",
                  ask="instrument", answer="measures", key="instrument",
                  wordings=("What does {a_x} measure?", "What is {a_x} used to measure?",
                            "Which quantity is measured with {a_x}?")),
    TableQuestion("physics", "instrument_for_quantity", fact="instrument", table="instruments",
                  ask="measures", answer="instrument", key="instrument",
                  wordings=("Which instrument is used to measure {x}?", "Which instrument measures {x}?")),
)
