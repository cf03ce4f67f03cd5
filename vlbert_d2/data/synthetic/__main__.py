"""``python -m vlbert_d2.data.synthetic --help``"""
from . import main

raise SystemExit(main())
