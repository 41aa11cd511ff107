"""A local Binance USD-M futures emulator (REST + user-data WebSocket) that real ccxt.pro binanceusdm can drive."""
