"""``python -m memoh_trio`` runs the ``memoh-trio`` command line."""

from ._cli import main

if __name__ == "__main__":
    main()
