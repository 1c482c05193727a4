"""HTTP endpoints: the route table (`routes.py`) and one module per resource."""
