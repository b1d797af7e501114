from saga_conformance.cli import main

raise SystemExit(main())
