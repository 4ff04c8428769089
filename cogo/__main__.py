from cogo.cli import main

raise SystemExit(main())
