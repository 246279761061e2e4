"""One router per resource; routers parse and serialize only."""
