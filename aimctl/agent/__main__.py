from aimctl.agent.cli import main

main()
