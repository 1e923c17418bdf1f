"""The dashboard's tabs, one module each: `Tab(...)` builds its components inside a `gr.Tab`, and
`tab.wire(...)` connects its events once every tab exists (some events write into another tab).
ui/app.py assembles them."""
