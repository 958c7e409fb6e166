from aimctl.agent.cli import main

raise SystemExit(main())
