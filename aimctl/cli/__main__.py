from aimctl.cli.main import main

main()
