from saga_buyvideo.cli import main

raise SystemExit(main())
