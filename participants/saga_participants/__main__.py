from saga_participants.cli import main

raise SystemExit(main())
