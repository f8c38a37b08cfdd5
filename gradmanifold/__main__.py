"""python -m gradmanifold"""

from gradmanifold.cli import main

main()
