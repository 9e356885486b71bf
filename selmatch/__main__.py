from selmatch.cli import main

raise SystemExit(main())
