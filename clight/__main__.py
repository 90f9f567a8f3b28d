from clight.commands import main

main()
