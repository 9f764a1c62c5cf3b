from cpfd.cli import main

main()
