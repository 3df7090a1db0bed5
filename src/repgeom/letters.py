"""The answer letters of a multiple-choice question, in order: choice columns, gold labels, the letters scored.

Standard library only, so that any module (the data stage, the extraction, the store reader) can import it."""

ANSWER_LETTERS = ("A", "B", "C", "D")
