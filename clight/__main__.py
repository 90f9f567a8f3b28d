from clight.cli import main

main()
