"""The ``fastbilevel`` command line (click)."""
