from dginstyle.cli import main

raise SystemExit(main())
