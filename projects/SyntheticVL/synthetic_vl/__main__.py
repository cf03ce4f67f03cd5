"""``python -m synthetic_vl --help``"""
from .cli import main

raise SystemExit(main())
